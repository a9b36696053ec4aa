"""``clipq read IMAGE... --question "..."``: which candidate answer the text in an image gives (the reading model)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    from clipq.app.cliutil import add_backend_args

    p = subparsers.add_parser("read", help="read the text in images: the best of candidate answers (reading model)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("-q", "--question", action="append", required=True, metavar="QUESTION",
                   help="the question (once: for every image; repeated: one per image, or several for one image)")
    p.add_argument("--candidates", default=None, metavar="A,B,C",
                   help="comma-separated candidate answers (default: the reading model's list in the manifest)")
    p.add_argument("-k", "--top-k", dest="k", type=int, default=3, help="candidates listed per answer (default %(default)s)")
    p.add_argument("--max-pixels", type=int, default=None, help="refuse images larger than this (width x height)")
    add_backend_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import clipq.runtime as rt
    from clipq.app.cliutil import print_json
    from clipq.runtime.preprocess import DEFAULT_MAX_PIXELS
    from clipq.runtime.tasks import pairs

    candidates = None if args.candidates is None else [c.strip() for c in args.candidates.split(",") if c.strip()]
    backend = rt.connect(args.artifacts, server=args.server)
    try:
        reader = rt.ReadingModel(backend, max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)
        results = reader.read(args.images, args.question, candidates, top_k=args.k)
    finally:
        backend.close()
    image_of, question_of = pairs(len(args.images), len(args.question))
    rows = [(args.images[i], args.question[j], r) for i, j, r in zip(image_of, question_of, results)]
    if args.json:
        print_json([{"image": image, "question": q, **r.to_dict()} for image, q, r in rows])
        return 0
    for image, q, r in rows:
        alts = ", ".join(f"{t} {s:.3f}" for t, s in r.top[1:])
        print(f"{image}\nQ: {q}\nA: {r.answer} ({r.score:.3f})" + (f"   others: {alts}" if alts else ""))
    return 0
