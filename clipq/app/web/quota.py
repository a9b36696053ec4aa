"""Per-client quotas: a request rate (token bucket) and a concurrency limit, 429 with ``Retry-After``.

A client is a key when the app has keys (``key:<n>``, set by :class:`~.auth.ApiKeys`), else a
client address (``addr:<ip>``; behind a proxy that is the proxy's, see docs/security.md). Only the
keyed routes count (``/v1/*``, thumbnails): health checks and the page's static files never use up a
quota. These sit in front of the app-wide limits, which stay: ``max_pending`` (503 when the thread pool
is full), the body size and image pixels (413).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .auth import is_open
from .errors import ApiError
from .middleware import send_error

#: buckets kept before idle, full ones are dropped (bounds memory under many client addresses)
_MAX_CLIENTS = 10_000


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    inflight: int = 0


class TokenBuckets:
    """A token bucket per client: ``rate`` tokens a second up to ``burst``; one request takes one.

    Args:
        rate: Tokens added per second (requests per second sustained); 0 means no rate limit.
        burst: The bucket's size (requests at once after idling); default ``max(1, ceil(rate))``.
        clock: Monotonic seconds (tests pass their own).
    """

    def __init__(self, rate: float, burst: int | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.clock = rate, clock
        self.burst = burst or max(1, math.ceil(rate))
        self.buckets: dict[str, _Bucket] = {}

    def bucket(self, client: str) -> _Bucket:
        b = self.buckets.get(client)
        if b is None:
            if len(self.buckets) >= _MAX_CLIENTS:
                self._prune()
            b = self.buckets[client] = _Bucket(float(self.burst), self.clock())
        return b

    def take(self, client: str) -> float:
        """Take a token for ``client``: 0.0 when granted, else the seconds until one is there."""
        b = self.bucket(client)
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        b.tokens = min(float(self.burst), b.tokens + (now - b.stamp) * self.rate)
        b.stamp = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return 0.0
        return (1.0 - b.tokens) / self.rate

    def _prune(self) -> None:
        now = self.clock()
        for name, b in list(self.buckets.items()):
            if b.inflight == 0 and (self.rate <= 0 or b.tokens + (now - b.stamp) * self.rate >= self.burst):
                del self.buckets[name]


class Quotas:
    """Pure ASGI: per-client rate and concurrency limits on the keyed routes (429 with ``Retry-After``).

    Args:
        app: The inner ASGI app.
        rate: Requests per second per client (0: no rate limit).
        burst: Requests a client may make at once after idling (default: the rate, at least 1).
        concurrency: Requests per client in flight at once (0: no limit).
        metrics_open: Whether ``/metrics`` is open (then it is not counted either).
    """

    def __init__(self, app: Any, rate: float = 0.0, burst: int | None = None, concurrency: int = 0,
                 metrics_open: bool = True) -> None:
        self.app, self.concurrency, self.metrics_open = app, concurrency, metrics_open
        self.buckets = TokenBuckets(rate, burst)
        self.off = rate <= 0 and concurrency <= 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.off or scope["type"] != "http" or is_open(scope.get("path", ""), metrics_open=self.metrics_open):
            return await self.app(scope, receive, send)
        client = scope.get("state", {}).get("client") or "addr:?"
        b = self.buckets.bucket(client)
        if self.concurrency and b.inflight >= self.concurrency:
            return await send_error(send, ApiError(
                429, f"too many requests in flight for this client: {b.inflight}, the limit is {self.concurrency}",
                code="too_many_concurrent_requests", headers={"Retry-After": "1"}))
        wait = self.buckets.take(client)
        if wait > 0:
            return await send_error(send, ApiError(
                429, f"rate limit reached: {self.buckets.rate:g} requests/s (burst {self.buckets.burst}) per "
                f"client; retry in {wait:.2f} s", code="rate_limit_exceeded",
                headers={"Retry-After": str(max(1, math.ceil(wait)))}))
        b.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            b.inflight -= 1
