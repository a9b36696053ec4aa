"""``clipq tune``: sweep the image-to-prompt ensemble's alpha and Model B's K on validation data.

The paper left both open. This scores ``normalize(alpha*A + (1-alpha)*B_K)`` by mean cosine to the
true prompt embeddings for every (alpha, K), prints the grid, checks the exported ``ensemble_head``
against the numpy reference at the best cell, and with ``--write`` stores the best K and alpha (and
any weighting / temperature given) in the manifest's image -> prompt settings, the one record that
``clipq describe``, the web app, the thin client and a server rendered afterwards all read.
"""

from __future__ import annotations

import argparse
from typing import Any


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def add_parser(subparsers: Any) -> None:
    from clipq.app.cliutil import add_backend_args

    p = subparsers.add_parser("tune", help="sweep the image-to-prompt ensemble's alpha and K on validation data")
    p.add_argument("--data", required=True, help="data directory (as `clipq data synth` writes it)")
    p.add_argument("--split", default="val", help="split to tune on (default %(default)s)")
    p.add_argument("--alphas", type=_floats, default=None, help="comma-separated weights of Model A (default 0,0.1,..,1)")
    p.add_argument("--ks", type=_ints, default=None, help="comma-separated K values (default 1,3,5,10,20,50)")
    p.add_argument("--weighting", choices=("inverse_distance", "softmax", "uniform"), help="override Model B's weighting")
    p.add_argument("--temperature", type=float, help="override the softmax temperature")
    p.add_argument("--limit", type=int, help="use at most this many validation images")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--write", action="store_true", help="store the best K and alpha in the artifacts' manifest (the image -> prompt settings)")
    add_backend_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    import clipq.runtime as rt
    from clipq.app.cliutil import print_json
    from clipq.readers import World
    from clipq.runtime.errors import InvalidInputError
    from clipq.runtime.fusion import check_alpha, ensemble
    from clipq.runtime.img2prompt import write_settings
    from clipq.runtime.sweep import DEFAULT_ALPHAS, DEFAULT_KS, sweep
    from clipq.runtime.vectors import mean_cosine

    alphas = args.alphas or list(DEFAULT_ALPHAS)
    ks = args.ks or list(DEFAULT_KS)
    check_alpha(alphas)
    if any(k < 1 for k in ks):
        raise InvalidInputError(f"K values must be >= 1, got {ks}")

    split = World(args.data).split(args.split)
    ids = [i for i in split.image_ids if i in split.prompts]
    if args.limit:
        ids = ids[: args.limit]
    if not ids:
        raise InvalidInputError(f"split {args.split!r} of {args.data} has no images with prompts")
    paths = [str(split.path_of(i)) for i in ids]
    prompts = [split.prompts[i] for i in ids]

    backend = rt.connect(args.artifacts, server=args.server)
    try:
        task = rt.ImageToPrompt(backend)
        task.settings = task.settings.replace(weighting=args.weighting, temperature=args.temperature)
        fusion = task.fusion  # loaded with the settings above
        image_embeds = task.clip.encode_images(paths, batch_size=args.batch_size, progress=not args.json)
        a_val = rt.PromptRegressor(backend).predict(paths, batch_size=args.batch_size)
        targets = rt.PromptEncoder(backend).encode(prompts)
        b_by_k = fusion.predict_many_k(image_embeds, ks)
        table = sweep(a_val, b_by_k, targets, alphas, ks)
        best = table.best
        graph = rt.EnsembleHead(backend).fuse(a_val, b_by_k[best.k], best.alpha)
    finally:
        backend.close()
    reference = ensemble(a_val, b_by_k[best.k], best.alpha)
    head = {"mean_cosine": mean_cosine(graph, targets), "max_abs_diff": float(np.abs(graph - reference).max())}
    tuned = task.settings.replace(k=best.k, alpha=best.alpha)
    if args.write:
        write_settings(backend.manifest.root, tuned)

    if args.json:
        print_json({
            "split": args.split, "n": len(ids), "weighting": tuned.weighting, "temperature": tuned.temperature,
            **table.to_dict(), "ensemble_head": head, "written": bool(args.write), "settings": tuned.to_dict(),
        })
        return 0
    print(f"image -> prompt on {len(ids)} {args.split} images: mean cosine to the true prompt embedding")
    print(f"Model B weighting: {tuned.weighting}" + (f" (T={tuned.temperature:g})" if tuned.weighting == "softmax" else ""))
    print()
    print(table.to_markdown())
    print()
    a_only, b_only = table.model_a(), table.model_b()
    if a_only is not None:
        print(f"Model A alone (alpha=1): {a_only:.4f}")
    if b_only:
        kb = max(b_only, key=b_only.__getitem__)
        print(f"Model B alone (alpha=0): best {b_only[kb]:.4f} at K={kb}")
    print(f"best: alpha={best.alpha:g}, K={best.k}: {best.score:.4f}")
    print(f"ensemble_head graph at the best cell: {head['mean_cosine']:.4f} (max |graph - numpy| {head['max_abs_diff']:.2e})")
    if args.write:
        print(f"wrote K={best.k}, alpha={best.alpha:g} to {backend.manifest.root}/manifest.json "
              "(image -> prompt settings; re-render a server's repository to serve them)")
    return 0
