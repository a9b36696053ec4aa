"""The app's settings: one frozen dataclass, which the ``clipq app`` command fills from its flags."""

from __future__ import annotations

from dataclasses import dataclass, field

#: Names ``/v1/embeddings`` accepts in ``model``, and the tower each one runs.
TEXT_MODEL = "clip-text"
IMAGE_MODEL = "clip-image"


@dataclass(frozen=True, kw_only=True)
class AppSettings:
    """What the app serves and the limits it enforces.

    Attributes:
        host: Interface to bind; loopback by default.
        port: TCP port (0 picks a free one).
        timeout_s: Longest a request waits for the backend (queue included) before a 504.
        workers: Threads running blocking runtime calls (encoders, index, VQA).
        max_pending: Requests admitted to the thread pool at once; beyond this a 503 says so at
            once instead of queueing without bound.
        max_request_bytes: Largest request body (413 above).
        max_image_bytes: Largest decoded image (413 above).
        max_image_pixels: Largest image, width x height, checked from its header before decoding.
        max_inputs: Most texts in one ``/v1/embeddings`` request.
        max_images: Most images in one ``/v1/embeddings`` request.
        max_text_chars: Longest text in characters; longer than the model's context in tokens is
            refused too unless the request sets ``truncate``.
        max_k: Most results one search returns.
        thumb_size: Default thumbnail edge in pixels (``/thumbs/{id}?size=`` up to 512).
        warmup: Run one text and one image through the encoder at start-up.
        api_keys: Keys a request must present as ``Authorization: Bearer <key>`` on every data
            route (see :mod:`.auth`); empty: no key needed. Kept out of ``repr``.
        metrics_need_key: Whether ``/metrics`` needs a key too (default: open, for a scraper).
        rate_limit: Requests per second per client, a key or (without keys) an address, as a
            token bucket; 0: none. Over it, 429 with ``Retry-After`` (see :mod:`.quota`).
        rate_burst: Requests a client may make at once after idling (0: the rate, at least 1).
        max_concurrent: Requests per client in flight at once (0: no limit; 429 above).
        tls_cert: PEM certificate (chain) file: serve HTTPS (uvicorn's ``ssl_certfile``); None: HTTP.
        tls_key: Its PEM private key file (``ssl_keyfile``); needed with ``tls_cert``.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    timeout_s: float = 30.0
    workers: int = 4
    max_pending: int = 64
    max_request_bytes: int = 24 * 1024 * 1024
    max_image_bytes: int = 16 * 1024 * 1024
    max_image_pixels: int = 36_000_000
    max_inputs: int = 256
    max_images: int = 32
    max_text_chars: int = 2000
    max_k: int = 100
    thumb_size: int = 160
    warmup: bool = True
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    metrics_need_key: bool = False
    rate_limit: float = 0.0
    rate_burst: int = 0
    max_concurrent: int = 0
    tls_cert: str | None = None
    tls_key: str | None = None

    def __post_init__(self) -> None:
        for name in ("timeout_s", "workers", "max_pending", "max_request_bytes", "max_image_bytes",
                     "max_image_pixels", "max_inputs", "max_images", "max_text_chars", "max_k", "thumb_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"AppSettings.{name} must be > 0, got {getattr(self, name)!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("AppSettings.tls_cert and tls_key go together: give both, or neither")
        for name in ("rate_limit", "rate_burst", "max_concurrent"):
            if getattr(self, name) < 0:
                raise ValueError(f"AppSettings.{name} must be >= 0 (0: no limit), got {getattr(self, name)!r}")

    def limits(self) -> dict[str, float | int]:
        """The limits as a dict (``GET /v1/limits`` and the docs)."""
        names = ("timeout_s", "max_pending", "max_request_bytes", "max_image_bytes", "max_image_pixels",
                 "max_inputs", "max_images", "max_text_chars", "max_k", "rate_limit", "rate_burst", "max_concurrent")
        return {n: getattr(self, n) for n in names}
