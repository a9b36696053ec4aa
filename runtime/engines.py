"""The engine registry: every backend clipq can run a network on, by name, in one table.

``connect`` opens a backend from this table, the export asks it which graph variants an engine runs,
and the Triton python model opens its in-server engine through it. Adding an engine (OpenVINO, say)
is one :func:`register` call and a module that defines the backend class: no if/elif on engine names
anywhere else. Backend modules are imported lazily, so the registry itself costs nothing at import.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ClipqError

__all__ = ["DEFAULT_ENGINE", "ENGINES", "Engine", "UnknownEngineError", "engine", "engine_for_url", "open_backend",
           "register"]


class UnknownEngineError(ClipqError, ValueError):
    """An engine name (or URL scheme) that no registered engine answers to."""


@dataclass(frozen=True, kw_only=True)
class Engine:
    """One registered engine.

    Attributes:
        name: registry key (``onnxruntime``, ``triton``, ...).
        backend: ``"module:Class"`` of the backend; constructed as ``Class(manifest, **kw)`` for a local
            engine and ``Class(url, manifest, **kw)`` for a remote one.
        description: one line for ``--help`` and the docs.
        variants: graph variants of the artifact this engine runs (empty: whatever the server holds).
        schemes: URL schemes that select this engine (remote engines only).
        extra: the pip extra that installs what it needs.
    """

    name: str
    backend: str
    description: str
    variants: tuple[str, ...] = ()
    schemes: tuple[str, ...] = ()
    extra: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def remote(self) -> bool:
        return bool(self.schemes)

    def backend_class(self) -> type:
        mod, _, cls = self.backend.partition(":")
        return getattr(importlib.import_module(mod), cls)


ENGINES: dict[str, Engine] = {}
DEFAULT_ENGINE = "onnxruntime"


def register(e: Engine) -> Engine:
    """Add ``e`` to the table (a later registration of the same name replaces the earlier)."""
    ENGINES[e.name] = e
    return e


def engine(name: str) -> Engine:
    """The engine called ``name``.

    Raises:
        UnknownEngineError: no such engine (the message lists the registered ones).
    """
    try:
        return ENGINES[name]
    except KeyError:
        raise UnknownEngineError(f"unknown engine {name!r}; registered: {', '.join(sorted(ENGINES))}") from None


def engine_for_url(url: str) -> Engine:
    """The remote engine that serves ``url`` (chosen by its scheme, e.g. ``grpc://``).

    Raises:
        UnknownEngineError: no registered engine takes that scheme.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    for e in ENGINES.values():
        if scheme in e.schemes:
            return e
    schemes = sorted(s for e in ENGINES.values() for s in e.schemes)
    raise UnknownEngineError(
        f"server must be a URL like grpc://127.0.0.1:8001 or http://127.0.0.1:8000 (schemes: {', '.join(schemes)}),"
        f" got {url!r}"
    )


def open_backend(name: str, manifest: Any, *args: Any, **kw: Any) -> Any:
    """Construct the backend of engine ``name`` over ``manifest`` (remote engines take the URL first)."""
    e = engine(name)
    cls = e.backend_class()
    return cls(*args, manifest, **kw) if e.remote else cls(manifest, *args, **kw)


register(Engine(
    name="onnxruntime", backend="clipq.runtime.backends.ort:OrtBackend",
    description="in-process onnxruntime (providers TensorRT > CUDA > CPU where present)",
    variants=("fp32", "int8", "fp16"),
))
register(Engine(
    name="triton", backend="clipq.runtime.backends.triton:TritonBackend",
    description="a Triton Inference Server over gRPC or HTTP (tritonclient)",
    schemes=("grpc", "http", "https"), extra="runtime",
))
