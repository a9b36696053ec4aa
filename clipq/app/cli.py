"""The ``clipq`` console script: a thin layer over the stages, each imported lazily.

Every command lives in ``clipq/app/commands/<name>.py`` with ``add_parser(subparsers)``; that module
imports only argparse at import time and loads its stage inside the handler, so ``clipq --help``
and the runtime commands never import torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

COMMANDS = (
    "demo", "data", "train", "importer", "eval", "export", "bundle", "serve", "deploy", "index", "embed", "search", "ask",
    "describe", "read",
    "tune", "tune_engines", "bench", "app",
)


def build_parser() -> argparse.ArgumentParser:
    from clipq import __version__

    parser = argparse.ArgumentParser(prog="clipq", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"clipq {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"clipq.app.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"clipq.app.commands.{name}":
                continue  # command not part of this build
            raise
        mod.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (tests call this directly)."""
    from clipq.runtime.errors import ClipqError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        rc = args.func(args)
    except ClipqError as e:
        print(f"clipq {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
