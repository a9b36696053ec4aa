"""Metric functions (numpy only, so the runtime and the evaluation share them)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def recall_at_k(sim: np.ndarray, gt: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Recall@K in percent for queries (rows of ``sim``) whose relevant item is column ``gt[i]``.

    Ties are counted pessimistically: an item ranks after every item with a strictly higher score
    and after equal-scored items that come first.
    """
    sim = np.asarray(sim, dtype=np.float64)
    gt = np.asarray(gt)
    target = sim[np.arange(len(gt)), gt][:, None]
    rank = (sim > target).sum(1)  # 0 = best
    return {k: float((rank < k).mean() * 100) for k in ks}


def accuracy(pred: Sequence, truth: Sequence) -> float:
    pred, truth = np.asarray(pred), np.asarray(truth)
    if len(truth) == 0:
        return float("nan")
    return float((pred == truth).mean() * 100)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean of row-wise cosine similarities (the image-to-prompt score)."""
    return float((l2_normalize(a) * l2_normalize(b)).sum(-1).mean())
