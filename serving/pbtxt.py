"""A small writer for protobuf text format (``config.pbtxt``), and a validating reader.

The renderer builds each model configuration as plain Python data and this module prints it, so
the whole configuration is visible in one place in :mod:`clipq.serving.repository` instead of being
spread over string templates. Where ``tritonclient[grpc]`` is installed, :func:`parse` reads a
file back into Triton's own ``ModelConfig`` message: the tests use it to prove that every rendered
file is a valid configuration for the server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_INLINE_WIDTH = 96


@dataclass(frozen=True)
class Enum:
    """An enum value, printed bare (``TYPE_FP32``, ``KIND_CPU``) rather than quoted."""

    name: str


def _scalar(v: Any) -> str:
    if isinstance(v, Enum):
        return v.name
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string literal is a valid protobuf text string literal
    raise TypeError(f"cannot write {type(v).__name__} to pbtxt")


def _is_message(v: Any) -> bool:
    return isinstance(v, Mapping)


def _inline(msg: Mapping[str, Any]) -> str | None:
    """A short message of scalars on one line (``{ key: "a" value: "b" }``), else ``None``."""
    parts = []
    for key, value in msg.items():
        if value is None:
            continue
        if _is_message(value):
            inner = _inline(value)
            if inner is None:
                return None
            parts.append(f"{key} {inner}")
        elif isinstance(value, Sequence) and not isinstance(value, str):
            if any(_is_message(v) for v in value):
                return None
            if value:
                parts.append(f"{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            parts.append(f"{key}: {_scalar(value)}")
    text = "{ " + " ".join(parts) + " }"
    return text if len(text) <= _INLINE_WIDTH else None


def _lines(msg: Mapping[str, Any], indent: int) -> list[str]:
    pad = "  " * indent
    out: list[str] = []
    for key, value in msg.items():
        if value is None:
            continue
        if _is_message(value):
            out.append(f"{pad}{key} {{")
            out.extend(_lines(value, indent + 1))
            out.append(f"{pad}}}")
        elif isinstance(value, Sequence) and not isinstance(value, str):
            if not value:
                continue
            if all(_is_message(v) for v in value):
                out.append(f"{pad}{key} [")
                for i, v in enumerate(value):
                    comma = "," if i < len(value) - 1 else ""
                    inline = _inline(v)
                    if inline is not None:
                        out.append(f"{pad}  {inline}{comma}")
                        continue
                    out.append(f"{pad}  {{")
                    out.extend(_lines(v, indent + 2))
                    out.append(f"{pad}  }}{comma}")
                out.append(f"{pad}]")
            else:
                out.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            out.append(f"{pad}{key}: {_scalar(value)}")
    return out


def dumps(msg: Mapping[str, Any], header: Sequence[str] = ()) -> str:
    """Print a message (nested dicts and lists; ``None`` and empty lists are left out).

    Args:
        msg: The message; keys are field names in the order they should appear.
        header: Comment lines written first (without the ``#``).

    Returns:
        The text, ending with a newline.
    """
    lines = [f"# {h}".rstrip() for h in header]
    return "\n".join([*lines, *_lines(msg, 0)]) + "\n"


def parse(text: str) -> Any:
    """Parse ``config.pbtxt`` text into Triton's ``ModelConfig`` protobuf message.

    Raises:
        MissingDependencyError: ``tritonclient[grpc]`` (which carries the message type) is missing.
        google.protobuf.text_format.ParseError: the text is not a valid ``ModelConfig``.
    """
    from clipq.runtime.errors import MissingDependencyError

    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise MissingDependencyError("tritonclient[grpc]", "serve", "validating config.pbtxt") from e
    return text_format.Parse(text, model_config_pb2.ModelConfig())
