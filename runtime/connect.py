"""One entry point to a backend: an in-process engine by name, or a server by its URL (see :mod:`.engines`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .backend import Backend
from .engines import DEFAULT_ENGINE, engine_for_url, open_backend
from .manifest import Manifest

#: Where the artifact directory is looked for when none is given.
DEFAULT_ARTIFACTS = "runs/demo/artifacts"


def default_artifacts() -> Path:
    """``$CLIPQ_ARTIFACTS``, else ``runs/demo/artifacts`` (what ``clipq demo`` writes)."""
    return Path(os.environ.get("CLIPQ_ARTIFACTS") or DEFAULT_ARTIFACTS)


def connect(artifacts: Manifest | str | os.PathLike[str] | None = None, server: str | None = None,
            *, engine: str | None = None, **kw: Any) -> Backend:
    """Open a backend over an artifact directory.

    Args:
        artifacts: The artifact directory (or its loaded manifest); default
            :func:`default_artifacts`. A Triton client needs it too: tensor names, tokenizers and
            preprocessing come from the manifest, not from the server.
        server: a server URL (``grpc://host:port``, ``http://host:port``): the engine is the one
            registered for its scheme (:func:`clipq.runtime.engines.engine_for_url`).
        engine: an in-process engine by name (default :data:`~clipq.runtime.engines.DEFAULT_ENGINE`);
            see :data:`clipq.runtime.engines.ENGINES`.
        **kw: Passed on to the backend class (variant, threads, providers, protocol, timeout_s, ...).

    Returns:
        A :class:`~clipq.runtime.backend.Backend`.

    Raises:
        ArtifactError: the artifact directory or its manifest is missing or inconsistent.
        UnknownEngineError: an engine name or URL scheme that no engine is registered for.
        MissingDependencyError: the engine's package is not installed.
    """
    manifest = artifacts if isinstance(artifacts, Manifest) else Manifest.load(artifacts or default_artifacts())
    if server is not None:
        return open_backend(engine_for_url(server).name, manifest, server, **kw)
    return open_backend(engine or DEFAULT_ENGINE, manifest, **kw)
