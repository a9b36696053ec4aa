"""Helpers every CLI command shares: backend options, opening an encoder, JSON output, captions.

Only stdlib at import time (``clipq --help`` must not load the stages); the runtime loads inside.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def default_artifacts_arg() -> str:
    """``$CLIPQ_ARTIFACTS``, else the demo's artifact directory (as :func:`clipq.runtime.connect.default_artifacts`)."""
    from clipq.runtime.connect import default_artifacts

    return str(default_artifacts())


def add_backend_args(p: argparse.ArgumentParser) -> None:
    """``--artifacts``, ``--server`` and ``--json``, the same on every retrieval command.

    With ``--server`` and no ``--artifacts`` the client is thin: it needs no local files (what it must
    know comes from the server). Without ``--server`` the artifacts default to ``$CLIPQ_ARTIFACTS`` or
    the demo's (``connect`` resolves ``None`` so).
    """
    p.add_argument("--artifacts", default=None,
                   help=f"artifact directory (default: $CLIPQ_ARTIFACTS or {default_artifacts_arg()}; "
                        "none needed with --server)")
    p.add_argument("--server", default=None, metavar="URL", help="Triton server (grpc://host:port or http://host:port)")
    p.add_argument("--json", action="store_true", help="print JSON for machines instead of text")


def open_encoder(args: argparse.Namespace) -> tuple[Any, Any]:
    """Connect to the backend the arguments name; returns (backend, ClipEncoder)."""
    import clipq.runtime as rt
    from clipq.runtime.tasks import ClipEncoder

    # in process, images decode on every core while the engine runs: onnxruntime's threads must not
    # busy-wait between ops (measured on 12 MP photos, 2 cores: 31 against 15 images/s; docs/export.md)
    kw = {} if args.server else {"spin": False}
    backend = rt.connect(args.artifacts, server=args.server, **kw)
    try:
        return backend, ClipEncoder(backend)
    except BaseException:
        backend.close()
        raise


def caption_metadata(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Index metadata by image id from a captions CSV (``image,text``; the first caption per image wins).

    Raises:
        DataFormatError: the file is missing, lacks the columns, or a row is short or empty.
    """
    from clipq.readers import read_captions

    out: dict[str, dict[str, Any]] = {}
    for rec in read_captions(path):
        out.setdefault(rec.image, {"caption": rec.text})
    return out


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
