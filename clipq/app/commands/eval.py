"""`clipq eval ARTIFACTS --data DIR`: the evaluation table and JSON."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate trained artifacts: VQA, retrieval, image->prompt, reading")
    p.add_argument("artifacts", help="artifact directory")
    p.add_argument("--data", required=True, help="dataset root with a test split")
    p.add_argument("--json", dest="json_out", default=None, help="write the JSON here (default ARTIFACTS/eval.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipq.evaluate import evaluate, format_table

    res = evaluate(args.artifacts, args.data, out_json=args.json_out)
    print(format_table(res))
    print(f"written: {res['_path']}")
    return 0
