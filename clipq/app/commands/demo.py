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
    p.add_argument("--full", action="store_true",
                   help="train the whole plan however long it takes (default: a plan measured on this CPU keeps "
                        "training to its budget, every trainer at least at its floor; it is printed and recorded)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="training precision: auto (bf16 autocast where the CPU has bf16 units), fp32 (forces the "
                        "slower fp32 path on any CPU, to check it), bf16")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipq.app.demo_stages import run_demo

    run_demo(args.out, seed=args.seed, size=args.size, progress=not args.quiet,
             stages=args.stages.split(",") if args.stages else None, full=args.full,
             precision=args.precision)
    print(app_command(args.out))
    return 0


def app_command(out: str) -> str:
    """The line that opens the web app on what the demo wrote (docs/app.md)."""
    from pathlib import Path

    art, index = Path(out) / "artifacts", Path(out) / "test.index"
    extra = f" --index {index}" if (index / "index.json").is_file() else ""
    return f"open the page and the API on these artifacts: clipq app --artifacts {art}{extra}  (http://127.0.0.1:8000)"
