"""Metric functions of the evaluation (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# one implementation of these, shared with the runtime (torch-free)
from clipq.runtime.fusion import l2_normalize, mean_cosine

__all__ = ["accuracy", "l2_normalize", "mean_cosine", "recall_at_k"]


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
