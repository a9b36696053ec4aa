"""``clipq describe IMAGE``: image -> prompt with Model A + Model B (KNN), fused by the ensemble head.

Model A (``img2prompt_a``) predicts the prompt embedding from the pixels; Model B, the artifact's
``knn/`` store, averages the prompt embeddings of the nearest training images; the exported
``ensemble_head`` fuses them with the tuned alpha. The result is shown as the known prompts
closest to the fused embedding and the prompts of the nearest images.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    from clipq.app.cliutil import add_backend_args

    p = subparsers.add_parser("describe", help="describe images with prompts (image -> prompt, Models A + B)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("-k", type=int, default=3, help="prompts listed per image (default %(default)s)")
    p.add_argument("--alpha", type=float, default=None,
                   help="weight of Model A in the ensemble (default: the manifest's image -> prompt settings, "
                        "as trained or `clipq tune --write` left them; 0 without Model A)")
    p.add_argument("--embedding", action="store_true", help="include the fused 384-d embedding in --json output")
    add_backend_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import clipq.runtime as rt
    from clipq.app.cliutil import print_json

    backend = rt.connect(args.artifacts, server=args.server)
    try:
        out = rt.ImageToPrompt(backend).describe(args.images, alpha=args.alpha, n=args.k)
    finally:
        backend.close()
    if args.json:
        rows = []
        for path, d in zip(args.images, out):
            row = {"image": path, **d.to_dict()}
            if not args.embedding:
                row.pop("embedding", None)
            rows.append(row)
        print_json(rows)
        return 0
    for path, d in zip(args.images, out):
        print(f"{path}  (alpha {d.alpha:.2f}, K {d.k})")
        for text, score in d.closest:
            print(f"  {score:.3f}  {text}")
        if d.neighbours:
            print("  nearest images' prompts: " + "; ".join(t for t, _ in d.neighbours))
    return 0
