"""Vector maths shared by the runtime, the evaluation and the benchmarks (numpy only)."""

from __future__ import annotations

import numpy as np

from .errors import ShapeError

__all__ = ["cosine_rows", "l2_normalize", "mean_cosine"]


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``x / ||x||`` along ``axis`` (zero rows stay zero), as float32."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def cosine_rows(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``pred`` with the same row of ``target``: float [N].

    Raises:
        ShapeError: the shapes differ or are not 2-D.
    """
    p, t = np.asarray(pred, np.float32), np.asarray(target, np.float32)
    if p.ndim != 2 or p.shape != t.shape:
        raise ShapeError(f"cosine needs two [N, D] arrays of one shape, got {p.shape} and {t.shape}")
    return (l2_normalize(p) * l2_normalize(t)).sum(axis=1)


def mean_cosine(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean row-wise cosine similarity (the image-to-prompt competition metric)."""
    return float(cosine_rows(pred, target).mean())
