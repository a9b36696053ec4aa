"""``clipq ask IMAGE "question"``: visual question answering through the runtime (in process or Triton)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    from clipq.app.cliutil import add_backend_args

    p = subparsers.add_parser("ask", help="answer a question about an image (VQA)")
    p.add_argument("image", help="image file")
    p.add_argument("questions", nargs="+", metavar="QUESTION", help="one or more questions")
    p.add_argument("-k", type=int, default=3, help="answers listed per question (default %(default)s)")
    p.add_argument("--max-pixels", type=int, default=None, help="refuse images larger than this (width x height)")
    add_backend_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import clipq.runtime as rt
    from clipq.app.cliutil import print_json
    from clipq.runtime.preprocess import DEFAULT_MAX_PIXELS

    backend = rt.connect(args.artifacts, server=args.server)
    try:
        vqa = rt.VqaModel(backend, max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)
        answers = vqa.ask(args.image, args.questions, top_k=args.k)
    finally:
        backend.close()
    if args.json:
        print_json({"image": args.image, "answers": [{"question": q, **a.to_dict()}
                                                      for q, a in zip(args.questions, answers)]})
        return 0
    for q, a in zip(args.questions, answers):
        alts = ", ".join(f"{t} {p:.2f}" for t, p in a.top[1:])
        note = "  (question truncated to the model's context)" if a.truncated else ""
        print(f"Q: {q}{note}\nA: {a.answer} ({a.prob:.2f})" + (f"   others: {alts}" if alts else ""))
    return 0
