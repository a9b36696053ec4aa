"""One entry point to a backend: in-process onnxruntime, or a Triton server when given its URL."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .backend import Backend
from .errors import ClipqError
from .manifest import Manifest

#: Where the artifact directory is looked for when none is given.
DEFAULT_ARTIFACTS = "runs/demo/artifacts"
_SCHEMES = ("grpc://", "http://", "https://")


def default_artifacts() -> Path:
    """``$CLIPQ_ARTIFACTS``, else ``runs/demo/artifacts`` (what ``clipq demo`` writes)."""
    return Path(os.environ.get("CLIPQ_ARTIFACTS") or DEFAULT_ARTIFACTS)


def connect(artifacts: Manifest | str | os.PathLike[str] | None = None, server: str | None = None,
            **kw: Any) -> Backend:
    """Open a backend over an artifact directory.

    Args:
        artifacts: The artifact directory (or its loaded manifest); default
            :func:`default_artifacts`. A Triton client needs it too: tensor names, tokenizers and
            preprocessing come from the manifest, not from the server.
        server: ``None`` for in-process onnxruntime; ``grpc://host:port`` or ``http://host:port``
            for a Triton server.
        **kw: Passed on: to ``OrtBackend`` (variant, threads, providers, warmup, ...) or to
            ``TritonBackend`` (protocol, timeout_s, retries, ...).

    Returns:
        A :class:`~clipq.runtime.backend.Backend`.

    Raises:
        ArtifactError: the artifact directory or its manifest is missing or inconsistent.
        ClipqError: a server string that is not a grpc:// or http(s):// URL.
        MissingDependencyError: a server URL without tritonclient installed.
    """
    manifest = artifacts if isinstance(artifacts, Manifest) else Manifest.load(artifacts or default_artifacts())
    if server is None:
        from .backends.ort import OrtBackend

        return OrtBackend(manifest, **kw)
    if not server.startswith(_SCHEMES):
        raise ClipqError(f"server must be a URL like grpc://127.0.0.1:8001 or http://127.0.0.1:8000, got {server!r}")
    from .backends.triton import TritonBackend

    return TritonBackend(server, manifest, **kw)
