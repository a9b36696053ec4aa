"""``clipq app``: the web page and the REST API (``/v1/embeddings``, search, ask, describe) on uvicorn.

Over the runtime in process (``--artifacts DIR``) or any Triton server (``--server URL``); bound to
127.0.0.1 unless ``--host`` says otherwise; API keys (``--api-key``, ``--api-key-file``,
``$CLIPQ_API_KEYS``) close every data route. See docs/app.md and docs/security.md.
"""

from __future__ import annotations

import argparse
from typing import Any

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("app", help="web page + OpenAI-compatible REST API over the runtime or a Triton server")
    p.add_argument("--artifacts", default=None,
                   help="artifact directory (default: $CLIPQ_ARTIFACTS or runs/demo/artifacts)")
    p.add_argument("--server", default=None, metavar="URL", help="Triton server (grpc://host:port or http://host:port)")
    p.add_argument("--server-api-key", default=None, metavar="KEY",
                   help="the key of a server started with `clipq serve --api-key` (default: $CLIPQ_API_KEY)")
    p.add_argument("--server-ca", default=None, metavar="PEM",
                   help="CA file a grpcs:// server is verified against (default: $CLIPQ_CA_FILE, else the system's)")
    p.add_argument("--index", default=None, metavar="DIR", help="image index to search (from `clipq index build`)")
    p.add_argument("--store", default=None, metavar="URL",
                   help="a Milvus collection to search instead of --index: milvus://HOST:PORT/COLLECTION "
                        "(token in $CLIPQ_MILVUS_TOKEN) or milvus-lite://PATH.db/COLLECTION")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default %(default)s: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default %(default)s; 0 picks a free one)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a request may wait for the backend (504 after)")
    p.add_argument("--workers", type=int, default=4, help="threads running the blocking runtime calls")
    p.add_argument("--max-pending", type=int, default=64, help="calls admitted to those threads at once (503 above)")
    p.add_argument("--max-request-mb", type=float, default=24.0, help="largest request body, MiB (413 above)")
    p.add_argument("--max-image-pixels", type=int, default=36_000_000, help="largest image, width x height")
    p.add_argument("--max-inputs", type=int, default=256, help="most texts per /v1/embeddings request")
    p.add_argument("--max-images", type=int, default=32, help="most images per /v1/embeddings request")
    p.add_argument("--max-text-chars", type=int, default=2000, help="longest text, in characters")
    p.add_argument("--api-key", action="append", default=[], metavar="KEY",
                   help="a key clients must send as 'Authorization: Bearer KEY' (repeatable; also "
                        "--api-key-file and $CLIPQ_API_KEYS, comma-separated)")
    p.add_argument("--api-key-file", default=None, metavar="FILE", help="a file of API keys, one per line")
    p.add_argument("--metrics-need-key", action="store_true", help="/metrics needs a key too (default: open)")
    p.add_argument("--tls-cert", default=None, metavar="PEM", help="serve HTTPS with this certificate (chain)")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="the certificate's private key")
    p.add_argument("--rate-limit", type=float, default=0.0, metavar="R",
                   help="requests/s per key (per client address without keys); 429 above; 0: none")
    p.add_argument("--rate-burst", type=int, default=0, metavar="N", help="requests at once after idling (0: R)")
    p.add_argument("--max-concurrent", type=int, default=0, metavar="N",
                   help="requests in flight per key or address (429 above; 0: none)")
    p.add_argument("--no-warmup", action="store_true", help="skip the start-up warm-up of the encoder")
    p.add_argument("--no-access-log", action="store_true", help="no line per request on stderr")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=run)


def settings_from(args: argparse.Namespace) -> Any:
    """The :class:`AppSettings` the flags say (keys from the flags, the key file and the environment).

    Raises:
        ValueError: a limit out of range or an unreadable key file.
    """
    from clipq.app.web.auth import load_keys
    from clipq.app.web.settings import AppSettings

    return AppSettings(
        host=args.host, port=args.port, timeout_s=args.timeout, workers=args.workers, max_pending=args.max_pending,
        max_request_bytes=int(args.max_request_mb * 1024 * 1024), max_image_pixels=args.max_image_pixels,
        max_inputs=args.max_inputs, max_images=args.max_images, max_text_chars=args.max_text_chars,
        warmup=not args.no_warmup, api_keys=load_keys(args.api_key, args.api_key_file),
        metrics_need_key=args.metrics_need_key, rate_limit=args.rate_limit, rate_burst=args.rate_burst,
        max_concurrent=args.max_concurrent, tls_cert=args.tls_cert, tls_key=args.tls_key,
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from clipq.runtime.errors import MissingDependencyError

    try:
        from clipq.app.web.server import create_app, open_services, serve
    except ImportError as e:
        raise MissingDependencyError(getattr(e, "name", None) or "fastapi", "app", "the web app") from e
    try:
        settings = settings_from(args)
    except ValueError as e:
        print(f"clipq app: error: {e}", file=sys.stderr)
        return 2
    if args.store and args.index:
        print("clipq app: error: give --index DIR or --store URL, not both", file=sys.stderr)
        return 2
    if args.store:
        from clipq.runtime.index.milvus_url import MilvusURL

        MilvusURL.parse(args.store)  # a bad URL: StoreError naming it
        args.index = args.store
    services = open_services(settings, artifacts=args.artifacts, server=args.server, index=args.index,
                             server_api_key=args.server_api_key, server_ca=args.server_ca)
    app = create_app(services)
    if args.host not in _LOOPBACK and not settings.api_keys:
        print(f"clipq app: warning: listening on {args.host} without API keys: anyone who reaches the port can "
              "use it (--api-key; docs/security.md)", file=sys.stderr)
    what = args.server or services.source
    idx = f", index {args.index} ({len(services.index)} images)" if services.index is not None else ", no index"
    host = f"[{args.host}]" if ":" in args.host else args.host
    scheme = "https" if settings.tls_cert else "http"
    print(f"clipq app: {scheme}://{host}:{args.port}/ over {what}{idx}; API docs at /docs", flush=True)
    serve(app, settings, access_log=not args.no_access_log, log_level=args.log_level)
    return 0
