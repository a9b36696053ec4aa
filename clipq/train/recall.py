"""Text -> image Recall@K of every query form, for any text encoder: CLIP's and the dual-encoder baseline's.

Its own module so that the evaluation (``clipq.evaluate``) and the baseline's trainer
(``clipq.train.baseline``) share it without importing each other.
"""

from __future__ import annotations

import numpy as np

from clipq.runtime.metrics import recall_at_k
from clipq.runtime.templates import DEFAULT_TEMPLATES, SINGLE_TEMPLATE, TEMPLATE_SETS, embed_texts


def _recall(q: np.ndarray, img: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    return {f"R@{k}": v for k, v in recall_at_k(q @ img.T, gt).items()}


def retrieval_rows(text, img: np.ndarray, captions: list[list[str]]) -> dict:
    """Text -> image Recall@1/5/10 of every query form, for any text encoder with ``encode_texts``.

    Args:
        text: an encoder with ``encode_texts`` (CLIP's tower or the dual-encoder baseline).
        img: L2-normalised image embeddings [N, D] of the split.
        captions: per image, its captions; the first is the query unless a row says otherwise.
    Returns:
        ``single`` / ``ensemble`` (one template, the default ensemble), ``template_rows`` (each named set),
        ``no_punctuation`` (both again on queries without punctuation) and ``descriptions`` (first
        caption, the mean of every caption's embedding, all captions joined into one text).
    """
    keep = [i for i, c in enumerate(captions) if c]
    gt = np.array(keep)
    first = [captions[i][0] for i in keep]
    out: dict = {
        "single": _recall(embed_texts(text, first, (SINGLE_TEMPLATE,)), img, gt),
        "ensemble": _recall(embed_texts(text, first, DEFAULT_TEMPLATES), img, gt),
        "template_rows": {name: _recall(embed_texts(text, first, t), img, gt) for name, t in TEMPLATE_SETS.items()},
        "no_punctuation": {
            "single": _recall(embed_texts(text, first, (SINGLE_TEMPLATE,), punctuation=False), img, gt),
            "ensemble": _recall(embed_texts(text, first, DEFAULT_TEMPLATES, punctuation=False), img, gt),
        },
    }
    flat = [c for i in keep for c in captions[i]]
    emb = embed_texts(text, flat, (SINGLE_TEMPLATE,))
    rows, start = [], 0
    for i in keep:
        n = len(captions[i])
        v = emb[start : start + n].mean(0)
        rows.append(v / max(float(np.linalg.norm(v)), 1e-12))
        start += n
    joined = [" and ".join(c.rstrip(".") for c in captions[i]) for i in keep]
    out["descriptions"] = {
        "first": out["single"],
        "mean_of_captions": _recall(np.stack(rows), img, gt),
        "joined": _recall(embed_texts(text, joined, (SINGLE_TEMPLATE,)), img, gt),
        "captions_per_image": round(len(flat) / max(1, len(keep)), 2),
    }
    out["queries"] = len(keep)
    out["template_sets"] = {name: list(t) for name, t in TEMPLATE_SETS.items()}
    out["templates"] = {"single": SINGLE_TEMPLATE, "ensemble": list(DEFAULT_TEMPLATES)}
    return out
