"""The app factory, the services it serves, and uvicorn (in the foreground or on a thread for tests).

``create_app(services)`` wires the routes, the error handlers (OpenAI's error shape for every
failure, no traceback ever), the body limit and the metrics; ``open_services`` connects to the
runtime in process (``artifacts``) or to a Triton server (``server``) through
:func:`clipq.runtime.connect` and loads the index; ``serve`` runs uvicorn; ``serve_in_thread``
runs it on a background thread on a free loopback port (tests, the browser test).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .auth import ApiKeys
from .errors import ApiError, internal
from .middleware import BodyLimit, Measure, Metrics, RequestIds
from .pages import STATIC
from .pages import router as pages_router
from .quota import Quotas
from .routes import router as api_router
from .routes import validation_error
from .services import Services
from .settings import AppSettings

log = logging.getLogger("clipq.app")


def open_services(settings: AppSettings, *, artifacts: str | None = None, server: str | None = None,
                  index: str | None = None, backend: Any = None, spin: bool | None = False,
                  server_api_key: str | None = None, server_ca: str | None = None) -> Services:
    """Connect to the runtime and load what the app serves.

    Args:
        settings: The app's settings.
        artifacts: Artifact directory (in process; with ``server``, passed on to ``connect``).
        server: A Triton server URL (``grpc://host:8001``, ``http://host:8000``).
        index: An index directory (``clipq index build``), a Milvus store URL (``milvus://HOST:PORT/COLLECTION``,
            ``milvus-lite://PATH.db/COLLECTION``), or None for embeddings / ask / describe only.
        backend: An open backend to use instead of connecting (tests).
        spin: In process, whether onnxruntime's idle threads busy-wait (off by default: spinning
            threads take the cores from the event loop that parses and answers requests).
        server_api_key: The key of a server started with ``clipq serve --api-key`` (default:
            ``$CLIPQ_API_KEY``).
        server_ca: The CA file a ``grpcs://`` server is verified against (default: ``$CLIPQ_CA_FILE``).

    Raises:
        ArtifactError, BackendUnavailable, IndexCorruptError, ...: as the runtime raises them.
    """
    import clipq.runtime as rt
    from clipq.runtime.index import ImageIndex
    from clipq.runtime.index.stores import is_store_url, open_store

    if backend is None:
        backend = (rt.connect(artifacts, server=server, api_key=server_api_key, ca_file=server_ca) if server
                   else rt.connect(artifacts, spin=spin))
    try:
        encoder = rt.ClipEncoder(backend, max_pixels=settings.max_image_pixels)
        from clipq.runtime.compact import encoder_for_index

        # an index of projected vectors (issue 30) is checked against the projected encoder
        if index is not None and is_store_url(index):  # a Milvus collection (docs/deploy.md, "Milvus")
            loaded = open_store(index, encoder=encoder)
        else:
            loaded = ImageIndex.load(index, encoder=encoder_for_index(index, encoder)) if index is not None else None
        svc = Services(backend, settings, index=loaded, encoder=encoder,
                       source=server or str(artifacts or backend.manifest.root))
        if settings.warmup:
            svc.warmup()
        return svc
    except BaseException:
        backend.close()
        raise


def create_app(services: Services) -> FastAPI:
    """The ASGI app over ``services`` (which it closes at shutdown)."""
    from clipq import __version__

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        yield
        services.close()

    app = FastAPI(title="clipq", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None,
                  description="CLIP search, VQA and image -> prompt; OpenAI-compatible /v1/embeddings.")
    metrics = Metrics()
    app.state.services, app.state.metrics, app.state.settings = services, metrics, services.settings
    services.on_timeout = metrics.timeouts.inc
    app.include_router(api_router)
    app.include_router(pages_router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def respond(err: ApiError) -> JSONResponse:
        metrics.errors.labels(err.code or str(err.status)).inc()
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(ApiError)
    async def _api_error(_r: Request, e: ApiError) -> JSONResponse:
        return respond(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, e: RequestValidationError) -> JSONResponse:
        return respond(validation_error(list(e.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(r: Request, e: StarletteHTTPException) -> JSONResponse:
        carried = getattr(e, "api_error", None)
        if carried is not None:
            return respond(carried)
        if e.status_code == 404:
            return respond(ApiError(404, f"no such endpoint: {r.method} {r.url.path}", code="not_found"))
        if e.status_code == 405:
            return respond(ApiError(405, f"method {r.method} is not allowed on {r.url.path}",
                                    code="method_not_allowed"))
        return respond(ApiError(e.status_code, str(e.detail), code="http_error"))

    @app.exception_handler(Exception)
    async def _unexpected(_r: Request, e: Exception) -> JSONResponse:
        return respond(internal(e))

    settings = services.settings
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(Quotas, rate=settings.rate_limit, burst=settings.rate_burst or None,
                       concurrency=settings.max_concurrent, metrics_open=not settings.metrics_need_key)
    # outside the quotas, which count per key
    app.add_middleware(ApiKeys, keys=settings.api_keys, metrics_open=not settings.metrics_need_key)
    app.add_middleware(Measure, metrics=metrics)  # 401s and 413s are counted too
    app.add_middleware(RequestIds)  # outermost: every answer carries an id and is logged
    if services.index is not None:
        metrics.index_items.set(len(services.index))
    return app


def serve(app: FastAPI, settings: AppSettings, *, access_log: bool = True, log_level: str = "info") -> None:
    """Run uvicorn in the foreground until SIGINT/SIGTERM.

    The access log is the app's own (``clipq.app.access``, with the request id), not uvicorn's.
    """
    import sys

    import uvicorn

    if access_log:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        alog = logging.getLogger("clipq.app.access")
        alog.addHandler(handler)
        alog.setLevel(logging.INFO)
        alog.propagate = False
    uvicorn.run(app, host=settings.host, port=settings.port, access_log=False, log_level=log_level,
                server_header=False, timeout_graceful_shutdown=5, ssl_certfile=settings.tls_cert,
                ssl_keyfile=settings.tls_key)


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0, startup_timeout_s: float = 30.0,
                    tls_cert: str | None = None, tls_key: str | None = None) -> Iterator[str]:
    """Run uvicorn on a thread; yields the base URL (``http://127.0.0.1:PORT``, ``https://`` with
    ``tls_cert`` and ``tls_key``); stops on exit.

    Raises:
        RuntimeError: the server did not start within ``startup_timeout_s``.
    """
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            server_header=False, lifespan="on", ssl_certfile=tls_cert, ssl_keyfile=tls_key)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="clipq-app-uvicorn", daemon=True)
    thread.start()
    t0 = time.monotonic()
    while not server.started:
        if not thread.is_alive() or time.monotonic() - t0 > startup_timeout_s:
            server.should_exit = True
            raise RuntimeError("the app's uvicorn server did not start")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"{'https' if tls_cert else 'http'}://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(15)
