"""Pure ASGI layers: the request-body limit, the Prometheus metrics, and request ids with the access log.

Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``: no extra task per request and no
buffering of the body, which matters for the throughput ``clipq bench --target app`` measures.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.exceptions import HTTPException

from clipq.runtime.backends.triton_protocol import REQUEST_ID as request_id
from clipq.runtime.errors import MissingDependencyError

from .errors import ApiError, internal, log

_NO_ROUTE = "unmatched"
#: a client's X-Request-ID is kept when it looks like an id (else a new one is made): no spaces,
#: quotes or control characters that could forge a log line
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
# ``request_id``: the runtime's context variable of the current request's id; the backend calls made on
# its behalf (in the pool's threads, which get a copy of the context) send it to Triton
access_log = logging.getLogger("clipq.app.access")


class Metrics:
    """The app's Prometheus metrics, in a registry of its own (several apps may live in one process)."""

    def __init__(self) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError as e:
            raise MissingDependencyError("prometheus_client", "app", "/metrics") from e
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("clipq_app_requests", "HTTP requests by route, method and status",
                                ("route", "method", "status"), registry=r)
        self.latency = Histogram("clipq_app_request_duration_seconds", "HTTP request time by route", ("route",),
                                 buckets=(.002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30), registry=r)
        self.inflight = Gauge("clipq_app_requests_in_flight", "HTTP requests being served", registry=r)
        self.inputs = Counter("clipq_app_embedding_inputs", "inputs embedded by /v1/embeddings, by model",
                              ("model",), registry=r)
        self.errors = Counter("clipq_app_errors", "error responses by code", ("code",), registry=r)
        self.timeouts = Counter("clipq_app_backend_timeouts", "backend calls past the deadline (504)", registry=r)
        self.pending = Gauge("clipq_app_backend_pending", "calls admitted to the backend thread pool", registry=r)
        self.index_items = Gauge("clipq_app_index_items", "items in the loaded image index", registry=r)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


async def send_error(send: Any, err: ApiError) -> None:
    """Answer an ASGI request with ``err`` as JSON (for layers outside FastAPI's handlers)."""
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(HTTPException):
    """The body grew past the limit while it was read (no or a false ``Content-Length``)."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.status, error.message)
        self.api_error = error


class BodyLimit:
    """Refuse bodies over ``max_bytes`` with a 413: by ``Content-Length`` at once, else while reading."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self, size: int | None) -> ApiError:
        said = f"{size} bytes" if size is not None else f"more than {self.max_bytes} bytes"
        return ApiError(413, f"request body too large: {said}, the limit is {self.max_bytes}",
                        code="request_too_large")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                try:
                    size = int(v)
                except ValueError:
                    return await send_error(send, ApiError(400, "bad Content-Length header", code="bad_request"))
                if size > self.max_bytes:
                    return await send_error(send, self._too_large(size))
        seen = 0

        async def limited() -> dict[str, Any]:
            nonlocal seen
            msg = await receive()
            if msg.get("type") == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    # an HTTPException, because FastAPI re-raises those from body parsing (others
                    # become a generic 400); the app's handler renders the ApiError it carries
                    raise BodyTooLarge(self._too_large(None))
            return msg

        await self.app(scope, limited, send)


class Measure:
    """Count and time every request by its route template (not its path: ids must not become labels)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [0]

        async def capture(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                status[0] = int(msg["status"])
            await send(msg)

        m = self.metrics
        m.inflight.inc()
        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, capture)
        except Exception as e:  # noqa: BLE001 - answered here: uvicorn would drop the connection
            if status[0]:
                log.error("error after the response started", exc_info=e)
            else:
                await send_error(capture, internal(e))
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or _NO_ROUTE
            m.inflight.dec()
            m.latency.labels(name).observe(time.perf_counter() - t0)
            m.requests.labels(name, scope.get("method", ""), str(status[0])).inc()


class RequestIds:
    """Give every request an id and write the access log line.

    The id is the client's ``X-Request-ID`` when it is a plausible id, else a new ``uuid4`` hex;
    it is returned in the response's ``X-Request-ID``, set in :data:`request_id` (the backend calls
    send it on to Triton) and in ``scope["state"]["request_id"]``. One line per request goes to the
    ``clipq.app.access`` logger at INFO (:func:`~.server.serve` gives it a handler unless
    ``--no-access-log``): client address, method, path (never the query nor any header, so keys
    never reach a log), status, milliseconds and the id.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = None
        for k, v in scope.get("headers", ()):
            if k == b"x-request-id":
                text = v.decode("latin-1")
                rid = text if _REQUEST_ID.fullmatch(text) else None
                break
        rid = rid or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id.set(rid)
        status = [0]

        async def tagged(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                status[0] = int(msg["status"])
                msg = {**msg, "headers": [*msg.get("headers", ()), (b"x-request-id", rid.encode())]}
            await send(msg)

        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, tagged)
        finally:
            request_id.reset(token)
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                access_log.info('%s "%s %s" %d %.1fms request_id=%s', client[0] if client else "-",
                                scope.get("method", ""), scope.get("path", ""), status[0],
                                (time.perf_counter() - t0) * 1e3, rid)
