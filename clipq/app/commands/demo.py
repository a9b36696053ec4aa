"""`clipq demo`: the whole path on the embedded default."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole path on the embedded default and print what each stage made")
    p.add_argument("--out", default="runs/demo", help="output directory (data/, artifacts/, ...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="medium", choices=["small", "medium"])
    p.add_argument("--stages", default=None, help="comma-separated subset of stages to run")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipq.app.demo import run_demo

    run_demo(args.out, seed=args.seed, size=args.size, progress=not args.quiet,
             stages=args.stages.split(",") if args.stages else None)
    return 0
