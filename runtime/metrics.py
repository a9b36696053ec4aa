"""The metrics of every seed task, in one place (numpy only, torch-free).

The evaluation (``clipq.evaluate``), the export's task-metric gate, the index's recall check and the
benchmarks all score with these functions, so a figure in the docs is computed the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .vectors import mean_cosine

__all__ = ["accuracy", "mean_cosine", "neighbour_recall", "recall_at_k"]


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
    """Exact-match accuracy in percent (``nan`` for no items)."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if len(truth) == 0:
        return float("nan")
    return float((pred == truth).mean() * 100)


def neighbour_recall(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per query, the fraction of the true neighbours (rows of ``truth``) that ``found`` returned.

    The recall of an approximate nearest-neighbour search against exact search: float [N] in [0, 1].
    """
    found, truth = np.asarray(found), np.asarray(truth)
    return np.array([len(set(f.tolist()) & set(t.tolist())) / max(len(t), 1) for f, t in zip(found, truth)],
                    dtype=np.float64)
