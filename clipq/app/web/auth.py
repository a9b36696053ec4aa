"""API keys: ``Authorization: Bearer <key>`` on every route that returns data, as the OpenAI SDK sends it.

Open without a key: the page's static files (``/``, ``/static/*``), ``/healthz``, the API's schema
(``/docs``, ``/openapi.json``) and, unless ``AppSettings.metrics_need_key``, ``/metrics``. Everything
else (``/v1/*``, ``/thumbs/*``, and any path not listed, so a new route is closed by default) needs a
key. A presented key is compared with every configured key in constant time (``hmac.compare_digest``
over SHA-256 digests, so neither the keys' lengths nor where a mismatch starts leak), and is never
logged: the access log (:class:`~.middleware.AccessLog`) writes the path, never headers.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import ApiError
from .middleware import send_error

#: Environment variable of the app's keys, comma-separated.
KEYS_ENV = "CLIPQ_API_KEYS"
_OPEN = ("/", "/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/favicon.ico")
_OPEN_PREFIXES = ("/static/",)


def load_keys(keys: Iterable[str] = (), file: str | os.PathLike[str] | None = None,
              env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The app's keys from flags, a file (one per line, ``#`` comments) and ``$CLIPQ_API_KEYS``.

    Args:
        keys: Keys given one by one (``--api-key``, repeatable).
        file: A file of keys (``--api-key-file``), or None.
        env: The environment to read ``CLIPQ_API_KEYS`` from (default ``os.environ``).

    Returns:
        The distinct keys in the order first seen; empty means the app is open.

    Raises:
        ValueError: a key with whitespace inside, or a file that cannot be read (the message names
            the file and line, never the key).
    """
    env = os.environ if env is None else env
    found: list[tuple[str, str]] = [(k, "--api-key") for k in keys]
    if file is not None:
        try:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read the API key file {file}: {e}") from None
        found += [(ln, f"{file}:{n}") for n, ln in enumerate(lines, 1) if not ln.lstrip().startswith("#")]
    found += [(k, f"${KEYS_ENV}") for k in env.get(KEYS_ENV, "").split(",")]
    out: list[str] = []
    for key, where in found:
        key = key.strip()
        if not key:
            continue
        if any(c.isspace() for c in key):
            raise ValueError(f"an API key from {where} contains whitespace")
        if key not in out:
            out.append(key)
    return tuple(out)


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


class KeyRing:
    """The configured keys, as digests; :meth:`match` says which one a request presented."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [_digest(k) for k in keys]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def match(self, presented: bytes) -> int | None:
        """The index of the key equal to ``presented``, or None; every key is compared, no early exit."""
        d = _digest(presented)
        hit = None
        for i, want in enumerate(self._digests):
            if hmac.compare_digest(d, want) and hit is None:
                hit = i
        return hit


def bearer(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    for k, v in headers:
        if k == b"authorization":
            scheme, _, token = v.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


def is_open(path: str, *, metrics_open: bool) -> bool:
    """Whether ``path`` is served without a key."""
    return path in _OPEN or path.startswith(_OPEN_PREFIXES) or (metrics_open and path == "/metrics")


def refusal(missing: bool) -> ApiError:
    """The 401 for a missing or wrong key (OpenAI's shape and codes; the key is never echoed)."""
    if missing:
        return ApiError(401, "missing API key: send it as 'Authorization: Bearer <key>'", code="missing_api_key",
                        headers={"WWW-Authenticate": 'Bearer realm="clipq"'})
    return ApiError(401, "invalid API key", code="invalid_api_key",
                    headers={"WWW-Authenticate": 'Bearer realm="clipq", error="invalid_token"'})


class ApiKeys:
    """Pure ASGI: refuse a request to a keyed path without a configured key (401).

    Sets ``scope["state"]["client"]`` to who asked, for the quotas: ``key:<n>`` (the key's position,
    not the key) when keys are configured, else ``addr:<client address>``.
    """

    def __init__(self, app: Any, keys: Iterable[str], metrics_open: bool = True) -> None:
        self.app, self.ring, self.metrics_open = app, KeyRing(keys), metrics_open

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        client = scope.get("client")
        state["client"] = f"addr:{client[0] if client else '?'}"
        if self.ring and not is_open(scope.get("path", ""), metrics_open=self.metrics_open):
            token = bearer(scope.get("headers", ()))
            hit = self.ring.match(token) if token is not None else None
            if hit is None:
                return await send_error(send, refusal(token is None))
            state["client"] = f"key:{hit}"
        await self.app(scope, receive, send)
