"""Triton's two wire protocols behind one small adapter each: what differs between gRPC and HTTP.

:class:`~clipq.runtime.backends.triton.TritonBackend` and its asyncio twin never ask which protocol
they speak: the adapter of the URL's scheme (:data:`PROTOCOLS`, chosen by :func:`parse_url`) makes
their clients, request tensors and per-call options. Also here: the error vocabulary shared by
both protocols (a tritonclient exception's status and message).
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from typing import Any, ClassVar
from urllib.parse import urlsplit

import numpy as np

from ..errors import (
    AuthenticationError,
    ClipqError,
    DTypeError,
    InvalidImageError,
    InvalidInputError,
    InvalidTextError,
    MissingDependencyError,
    ShapeError,
)
from ..manifest import TRITON_DTYPES, TensorSpec

#: The header a server started with ``clipq serve --api-key`` wants on its restricted protocols
#: (Triton's ``--http-restricted-api`` / ``--grpc-restricted-protocol``; over gRPC Triton reads it
#: with the ``triton-grpc-protocol-`` prefix).
API_KEY_HEADER = "clipq-api-key"
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
#: Environment variable of the key a client sends when none is given.
API_KEY_ENV = "CLIPQ_API_KEY"
#: Environment variable of the CA file a TLS server (``grpcs://``) is verified against.
CA_FILE_ENV = "CLIPQ_CA_FILE"
#: The id of the request being served (the app sets it per request): sent as Triton's own request id
#: (its traces and logs carry it) and as an ``x-request-id`` header.
REQUEST_ID: ContextVar[str | None] = ContextVar("clipq_request_id", default=None)
_REFUSED = ("is restricted, expecting header",)

#: URL scheme -> protocol
SCHEMES = {"grpc": "grpc", "grpcs": "grpc", "http": "http", "https": "http"}
#: Triton config dtype -> manifest dtype name
FROM_TRITON = {v: k for k, v in TRITON_DTYPES.items()}
#: manifest dtype -> tritonclient wire dtype
WIRE = {"float32": "FP32", "float16": "FP16", "int64": "INT64", "int32": "INT32", "uint8": "UINT8",
        "bool": "BOOL", "bytes": "BYTES"}
#: clipq input errors the server-side models report by class name (see serving/backend/model.py)
REMOTE_ERRORS: dict[str, type[InvalidInputError]] = {
    c.__name__: c for c in (InvalidImageError, InvalidTextError, ShapeError, DTypeError, InvalidInputError)
}
_REMOTE_ERROR_RE = re.compile(
    r"(?P<cls>" + "|".join(REMOTE_ERRORS) + r"): (?:\[item (?P<index>\d+)(?:, (?P<source>.*?))?\] )?(?P<reason>.*)",
    re.S,
)


def as_array(x: Any, t: TensorSpec) -> np.ndarray:
    """Caller data -> numpy in the spec's dtype for BYTES inputs (lists of str/bytes are fine)."""
    if t.dtype != "bytes":
        return np.asarray(x)
    a = np.asarray(x, dtype=object) if not (isinstance(x, np.ndarray) and x.dtype == object) else x
    if a.ndim == 1 and len(t.shape) == 2 and t.shape[1] == 1:
        a = a.reshape(-1, 1)  # [N] texts or images -> [N, 1] as the config declares
    return np.vectorize(lambda v: v.encode("utf-8") if isinstance(v, str) else bytes(v), otypes=[object])(a) \
        if a.size else a


def remote_error(msg: str, model: str, start: int = 0) -> InvalidInputError | None:
    """The clipq input error a server-side model reported in ``msg`` (its index moved by ``start``), if any."""
    m = _REMOTE_ERROR_RE.search(msg)
    if not m:
        return None
    cls = REMOTE_ERRORS[m.group("cls")]
    index = int(m.group("index")) + start if m.group("index") is not None else None
    source = (m.group("source") or "").strip("'\"") or None
    err = cls(m.group("reason").strip(), index=index, source=source)
    err.args = (f"{model}: {err}",)
    return err


class Protocol:
    """One wire protocol: its tritonclient modules, clients and request pieces.

    Args:
        address: ``host:port``.
        ssl: Whether to use TLS.
        timeout_s: The deadline of each call.
        aio: Whether the asyncio client will be used (its module is imported now, so a missing
            dependency fails at construction).
        api_key: The key sent in :data:`API_KEY_HEADER` on every call, or None.
        ca_file: PEM file of the CA(s) a TLS server's certificate is verified against (default:
            the system's).

    Raises:
        MissingDependencyError: tritonclient (for this protocol) is not installed.
    """

    name: ClassVar[str] = ""
    default_port: ClassVar[int] = 0
    #: whether one blocking client may serve every thread
    thread_safe: ClassVar[bool] = False

    #: the prefix Triton wants before a restricted protocol's header name
    header_prefix: ClassVar[str] = ""

    def __init__(self, address: str, ssl: bool, timeout_s: float, aio: bool = False,
                 api_key: str | None = None, ca_file: str | None = None) -> None:
        self.address, self.ssl, self.timeout_s = address, ssl, float(timeout_s)
        self.api_key, self.ca_file = api_key, ca_file
        try:
            # InferInput / InferRequestedOutput live in the blocking module (the asyncio one reuses them)
            self.sync = self._import(aio=False)
            self.aio = self._import(aio=True) if aio else None
        except ImportError as e:
            raise MissingDependencyError("tritonclient[http,grpc]", "runtime", "the Triton backend") from e

    def _import(self, aio: bool) -> Any:
        raise NotImplementedError

    def client(self) -> Any:
        """A new blocking client."""
        raise NotImplementedError

    def aio_client(self, max_in_flight: int) -> Any:
        """A new asyncio client (this adapter was built with ``aio=True``)."""
        raise NotImplementedError

    def headers(self) -> dict[str, str] | None:
        """The headers of a call: the API key, and the current request's id (:data:`REQUEST_ID`)."""
        h = {}
        if self.api_key:
            h[self.header_prefix + API_KEY_HEADER] = self.api_key
        rid = REQUEST_ID.get()
        if rid:
            h["x-request-id"] = rid
        return h or None

    def call_options(self) -> dict[str, Any]:
        """Keyword arguments every call takes: the headers, and the deadline where the protocol sets it
        per call."""
        h = self.headers()
        return {"headers": h} if h else {}

    def json_options(self) -> dict[str, Any]:
        """Keyword arguments that make ``get_model_config`` / statistics answer JSON."""
        return {}

    def infer_input(self, name: str, a: np.ndarray, wire_dtype: str) -> Any:
        ii = self.sync.InferInput(name, list(a.shape), wire_dtype)
        ii.set_data_from_numpy(a)
        return ii

    def requested_output(self, name: str) -> Any:
        return self.sync.InferRequestedOutput(name)


class GrpcProtocol(Protocol):
    """gRPC: one channel serves every thread; the deadline is a per-call ``client_timeout``."""

    name = "grpc"
    default_port = 8001
    thread_safe = True
    header_prefix = GRPC_HEADER_PREFIX

    def _import(self, aio: bool) -> Any:
        if aio:
            import tritonclient.grpc.aio as mod
        else:
            import tritonclient.grpc as mod
        return mod

    def client(self) -> Any:
        return self.sync.InferenceServerClient(self.address, ssl=self.ssl, root_certificates=self.ca_file)

    def aio_client(self, max_in_flight: int) -> Any:
        return self.aio.InferenceServerClient(self.address, ssl=self.ssl, root_certificates=self.ca_file)

    def call_options(self) -> dict[str, Any]:
        return {**super().call_options(), "client_timeout": self.timeout_s}

    def json_options(self) -> dict[str, Any]:
        return {"as_json": True}


class HttpProtocol(Protocol):
    """HTTP: one keep-alive client per thread (not thread-safe); timeouts set on the connection;
    tensors travel as binary data, not JSON lists."""

    name = "http"
    default_port = 8000
    thread_safe = False

    def _import(self, aio: bool) -> Any:
        if aio:
            import tritonclient.http.aio as mod
        else:
            import tritonclient.http as mod
        return mod

    def client(self) -> Any:
        return self.sync.InferenceServerClient(self.address, ssl=self.ssl, connection_timeout=self.timeout_s,
                                               network_timeout=self.timeout_s)

    def aio_client(self, max_in_flight: int) -> Any:
        return self.aio.InferenceServerClient(self.address, ssl=self.ssl, conn_timeout=self.timeout_s,
                                              conn_limit=max_in_flight * 4)

    def infer_input(self, name: str, a: np.ndarray, wire_dtype: str) -> Any:
        ii = self.sync.InferInput(name, list(a.shape), wire_dtype)
        ii.set_data_from_numpy(a, binary_data=True)
        return ii

    def requested_output(self, name: str) -> Any:
        return self.sync.InferRequestedOutput(name, binary_data=True)


PROTOCOLS: dict[str, type[Protocol]] = {p.name: p for p in (GrpcProtocol, HttpProtocol)}


def parse_url(url: str, protocol: str | None = None) -> tuple[str, str, bool]:
    """Split a server URL into (protocol, ``host:port``, ssl).

    Args:
        url: ``grpc://host:port``, ``grpcs://host:port`` (TLS), ``http://host:port``,
            ``https://host:port`` or ``host:port``.
        protocol: ``"grpc"`` or ``"http"``; required for a URL without scheme, must agree otherwise.

    Raises:
        ClipqError: an unknown scheme or protocol, or a protocol that contradicts the scheme.
    """
    if "://" not in url:
        if protocol is None:
            raise ClipqError(f"server URL {url!r} has no scheme: use grpc://{url} or http://{url}")
        url = f"{protocol}://{url}"
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    proto = SCHEMES.get(scheme)
    if proto is None:
        raise ClipqError(f"unsupported server URL scheme {scheme!r} in {url!r} (use grpc://, grpcs://, http:// or "
                         "https://)")
    if protocol is not None and protocol != proto:
        raise ClipqError(f"protocol {protocol!r} contradicts the URL {url!r}")
    if not parts.hostname:
        raise ClipqError(f"server URL {url!r} has no host")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return proto, f"{host}:{parts.port or PROTOCOLS[proto].default_port}", scheme in ("https", "grpcs")


def open_protocol(url: str, protocol: str | None, timeout_s: float, aio: bool = False,
                  api_key: str | None = None, ca_file: str | None = None) -> Protocol:
    """The adapter for ``url`` (see :func:`parse_url`), its modules imported.

    Args:
        api_key: The server's key; None: ``$CLIPQ_API_KEY`` if set.
        ca_file: The CA file a TLS server is verified against; None: ``$CLIPQ_CA_FILE`` if set (for a
            TLS URL), else the system's CAs.
    """
    proto, address, ssl = parse_url(url, protocol)
    key = api_key if api_key is not None else (os.environ.get(API_KEY_ENV) or None)
    ca = ca_file if ca_file is not None else ((os.environ.get(CA_FILE_ENV) or None) if ssl else None)
    if ca is not None and not ssl:
        raise ClipqError(f"a CA file is given but {url!r} is not a TLS URL: use grpcs:// or https://")
    return PROTOCOLS[proto](address, ssl, timeout_s, aio=aio, api_key=key, ca_file=ca)


def refused(exc: BaseException) -> bool:
    """Whether a tritonclient error says the server refused the call for its key (restricted protocol)."""
    return any(s in message(exc) for s in _REFUSED)


def auth_error(exc: BaseException, url: str, what: str, sent_key: bool) -> AuthenticationError:
    """The typed error for a call the server refused for a missing or wrong key."""
    cause = "the API key sent was wrong" if sent_key else "no API key was sent"
    return AuthenticationError(
        f"Triton server at {url} refused {what}: {cause} (its restricted protocols want header "
        f"'{API_KEY_HEADER}'; pass api_key=..., --server-api-key or set ${API_KEY_ENV})")


def status(exc: BaseException) -> str:
    """The status of a tritonclient error (gRPC code name or HTTP status), ``""`` for others."""
    s = getattr(exc, "status", None)
    s = s() if callable(s) else s
    return str(s or "")


def message(exc: BaseException) -> str:
    """The message of a tritonclient error (or ``str(exc)``)."""
    m = getattr(exc, "message", None)
    m = m() if callable(m) else m
    return str(m or exc)


def is_connection_error(exc: BaseException) -> bool:
    """Whether an error says the server could not be reached (or is unavailable): the request did not run."""
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return True
    code, msg = status(exc), message(exc).lower()
    if "UNAVAILABLE" in code or code == "503":
        return True
    return any(s in msg for s in ("connection refused", "failed to connect", "connect failed",
                                  "connection reset", "name or service not known", "socket closed"))


def is_timeout(exc: BaseException) -> bool:
    """Whether an error is a deadline that passed (the request may have run)."""
    return isinstance(exc, TimeoutError) or "DEADLINE_EXCEEDED" in status(exc) or \
        "timed out" in message(exc).lower() or type(exc).__name__ == "Timeout"


def empty_outputs(spec: Any) -> dict[str, np.ndarray]:
    """Outputs of an empty batch, answered by the client: Triton refuses a batch of zero."""
    dt = {"bytes": object}
    return {t.name: np.zeros([0] + [max(d, 0) for d in t.shape[1:]], dtype=dt.get(t.dtype, t.dtype))
            for t in spec.outputs}


def join_outputs(spec: Any, results: Any) -> dict[str, np.ndarray]:
    """Every output of ``spec`` from the results of a request's chunks, joined in order."""
    out = {}
    for t in spec.outputs:
        parts = [r.as_numpy(t.name) for r in results]
        out[t.name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return out
