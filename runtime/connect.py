"""One entry point to a backend: an in-process engine by name, or a server by its URL (see :mod:`.engines`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .contract import Backend
from .engines import engine_for_url, open_backend, open_cpu_default
from .manifest import Manifest

#: Where the artifact directory is looked for when none is given.
DEFAULT_ARTIFACTS = "runs/demo/artifacts"


def default_artifacts() -> Path:
    """``$CLIPQ_ARTIFACTS``, else ``runs/demo/artifacts`` (what ``clipq demo`` writes)."""
    return Path(os.environ.get("CLIPQ_ARTIFACTS") or DEFAULT_ARTIFACTS)


def connect(artifacts: Manifest | str | os.PathLike[str] | None = None, server: str | None = None,
            *, engine: str | None = None, **kw: Any) -> Backend:
    """Open a backend over an artifact directory, or a client of a server.

    Args:
        artifacts: The artifact directory (or its loaded manifest); default
            :func:`default_artifacts`. With ``server`` it is optional: without it the client is
            thin and learns what it must know (dims, answer vocabulary, model names, Model B's
            settings) from the server, which decodes, preprocesses and tokenises; given, the client
            also checks that the server runs the graphs it describes.
        server: a server URL (``grpc://host:port``, ``http://host:port``): the engine is the one
            registered for its scheme (:func:`clipq.runtime.engines.engine_for_url`).
        engine: an in-process engine by name (see :data:`clipq.runtime.engines.ENGINES`). ``None``:
            each network's CPU default as measured and recorded in the manifest, where this host has
            the CPU flags it was measured on, else onnxruntime's default variant
            (:func:`~clipq.runtime.engines.open_cpu_default`).
        **kw: Passed on to the backend class (variant, threads, providers, protocol, timeout_s, ...;
            for a server, ``api_key``: the key of a server started with ``clipq serve --api-key``,
            default ``$CLIPQ_API_KEY``).

    Returns:
        A :class:`~clipq.runtime.contract.Backend`.

    Raises:
        ArtifactError: the artifact directory or its manifest is missing or inconsistent.
        UnknownEngineError: an engine name or URL scheme that no engine is registered for.
        MissingDependencyError: the engine's package is not installed.
        AuthenticationError: (a thin server client) the server refused the key, or wants one.
    """
    if server is not None:
        local = artifacts if isinstance(artifacts, Manifest) or artifacts is None else Manifest.load(artifacts)
        return open_backend(engine_for_url(server).name, local, server, **kw)
    manifest = artifacts if isinstance(artifacts, Manifest) else Manifest.load(artifacts or default_artifacts())
    if engine is None:
        return open_cpu_default(manifest, **kw)
    return open_backend(engine, manifest, **kw)
