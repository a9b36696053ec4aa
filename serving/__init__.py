"""clipq.serving: renders a Triton model repository from artifacts and runs tritonserver.

Torch-free: it reads the artifact manifest (``clipq.runtime.manifest``) and nothing else of the
other stages. :func:`render_repository` writes the repository (:mod:`.plan` decides the models,
:mod:`.renderers` writes them per flavour, :mod:`.layout` says where things sit); every Python-run
model uses the one ``clipq`` Python-based backend, ``backend/model.py``. :mod:`.launcher` finds
tritonserver and prepares its backends, and :class:`TritonServer` runs it on loopback. The remote
client is ``clipq.runtime.backends.triton``; the serving step of ``clipq demo`` (serve, query each
ensemble once, stop) is app code: ``clipq.app.serve_roundtrip``.
"""

from __future__ import annotations

from .launcher import TritonInstallation, find_libpython, find_tritonserver  # noqa: F401
from .layout import RepositoryLayout, is_repository, repository_layout  # noqa: F401
from .repository import (  # noqa: F401
    ENSEMBLES,
    FLAVOURS,
    RenderedRepository,
    RenderOptions,
    expected_configs,
    read_repository_info,
    render_repository,
)
from .server import ServerOptions, TritonServer  # noqa: F401
