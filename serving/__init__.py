"""clipq.serving: renders a Triton model repository from artifacts and runs tritonserver.

Torch-free: it reads the artifact manifest (``clipq.runtime.manifest``) and nothing else of the
other stages. :func:`render_repository` writes the repository (:mod:`.plan` decides the models,
:mod:`.renderers` writes them per flavour, :mod:`.layout` says where things sit); every Python-run
model uses the one ``clipq`` Python-based backend, ``backend/model.py``. :mod:`.launcher` finds
tritonserver and prepares its backends, :class:`TritonServer` runs it on loopback, and
:func:`serve_and_query` is the serving step of ``clipq demo``. The remote client is
``clipq.runtime.backends.triton``.
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


def serve_and_query(*args, **kwargs):  # noqa: ANN002,ANN003 - see clipq.serving.demo.serve_and_query
    """Start tritonserver on the artifacts, query each ensemble once, stop it (see :mod:`.demo`)."""
    from .demo import serve_and_query as run

    return run(*args, **kwargs)
