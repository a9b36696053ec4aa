"""clipq.serving: renders a Triton model repository from artifacts and runs tritonserver.

Torch-free: it reads the artifact manifest (``clipq.runtime.manifest``) and nothing else of the
other stages. :func:`render_repository` writes the repository; :class:`TritonServer` finds the
tritonserver binary, prepares its Python backend and runs it on loopback; :func:`serve_and_query`
is the serving step of ``clipq demo``. The remote client is ``clipq.runtime.backends.triton``.
"""

from __future__ import annotations

from .repository import (  # noqa: F401
    ENSEMBLES,
    FLAVOURS,
    RenderedRepository,
    RenderOptions,
    expected_configs,
    is_repository,
    read_repository_info,
    render_repository,
)
from .server import ServerOptions, TritonServer, find_libpython, find_tritonserver  # noqa: F401


def serve_and_query(*args, **kwargs):  # noqa: ANN002,ANN003 - see clipq.serving.demo.serve_and_query
    """Start tritonserver on the artifacts, query each ensemble once, stop it (see :mod:`.demo`)."""
    from .demo import serve_and_query as run

    return run(*args, **kwargs)
