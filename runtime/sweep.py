"""The alpha x K sweep that tunes the image-to-prompt ensemble on validation data.

The paper (2401.06167) left the ensemble's alpha and Model B's K open: :func:`sweep` scores every
(alpha, K) of a grid with the competition's metric, the mean cosine similarity of
``normalize(alpha*A + (1-alpha)*B_K)`` to the true prompt embeddings, and reports the whole table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidInputError, ShapeError
from .fusion import ensemble
from .vectors import mean_cosine

DEFAULT_ALPHAS: tuple[float, ...] = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 11))
DEFAULT_KS: tuple[int, ...] = (1, 3, 5, 10, 20, 50)


@dataclass(frozen=True)
class SweepRow:
    """One cell of the sweep."""

    alpha: float
    k: int
    score: float  # mean cosine to the target prompt embeddings


@dataclass
class SweepTable:
    """Mean cosine of the ensemble for every (alpha, K); alpha = 1 is Model A alone, 0 Model B."""

    rows: list[SweepRow] = field(default_factory=list)

    @property
    def alphas(self) -> list[float]:
        return sorted({r.alpha for r in self.rows})

    @property
    def ks(self) -> list[int]:
        return sorted({r.k for r in self.rows})

    @property
    def best(self) -> SweepRow:
        """The best (alpha, K); ties go to the smaller K, then the larger alpha (less work)."""
        return max(self.rows, key=lambda r: (round(r.score, 6), -r.k, r.alpha))

    def score(self, alpha: float, k: int) -> float:
        for r in self.rows:
            if r.k == k and abs(r.alpha - alpha) < 1e-9:
                return r.score
        raise KeyError((alpha, k))

    def model_a(self) -> float | None:
        """Model A alone (alpha = 1), if swept."""
        return next((r.score for r in self.rows if r.alpha == 1.0), None)

    def model_b(self) -> dict[int, float]:
        """Model B alone (alpha = 0) per K, if swept."""
        return {r.k: r.score for r in self.rows if r.alpha == 0.0}

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "metric": "mean_cosine",
            "rows": [r.__dict__ for r in self.rows],
            "best": best.__dict__,
            "model_a": self.model_a(),
            "model_b": {str(k): v for k, v in self.model_b().items()},
        }

    def to_markdown(self) -> str:
        """A K x alpha grid of mean cosine, the best cell in bold."""
        alphas, best = self.alphas, self.best
        cell = {(r.k, r.alpha): r.score for r in self.rows}
        head = "| K \\ alpha | " + " | ".join(f"{a:g}" for a in alphas) + " |"
        lines = [head, "|---" * (len(alphas) + 1) + "|"]
        for k in self.ks:
            vals = []
            for a in alphas:
                v = cell.get((k, a))
                text = "-" if v is None else f"{v:.4f}"
                vals.append(f"**{text}**" if (k, a) == (best.k, best.alpha) else text)
            lines.append(f"| {k} | " + " | ".join(vals) + " |")
        return "\n".join(lines)


def sweep(
    a_val: np.ndarray,
    b: Mapping[int, np.ndarray] | Callable[[int], np.ndarray] | np.ndarray,
    targets: np.ndarray,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    ks: Sequence[int] | None = None,
) -> SweepTable:
    """Score the ensemble on validation data for every alpha and K.

    Args:
        a_val: Model A's predictions [N, P].
        b: Model B's predictions: a mapping K -> [N, P], a function K -> [N, P], or one array
            (then ``ks`` must name its single K, or be None for K = 0 meaning "as given").
        targets: the true prompt embeddings [N, P].
        alphas: weights of A to try, in [0, 1].
        ks: neighbour counts to try (default: the mapping's keys, or :data:`DEFAULT_KS`).

    Returns:
        A :class:`SweepTable`.

    Raises:
        ShapeError / InvalidInputError: shapes or values do not fit.
    """
    a_val = np.asarray(a_val, np.float32)
    targets = np.asarray(targets, np.float32)
    if a_val.shape != targets.shape or a_val.ndim != 2:
        raise ShapeError(f"A and targets must share one [N, P] shape, got {a_val.shape} and {targets.shape}")
    if isinstance(b, np.ndarray):
        if ks is not None and len(ks) != 1:
            raise InvalidInputError("one B array fits one K; pass a mapping or a function for several")
        k0 = int(ks[0]) if ks else 0
        b_of: Callable[[int], np.ndarray] = {k0: b}.__getitem__
        ks = [k0]
    elif isinstance(b, Mapping):
        b_of = b.__getitem__
        ks = sorted(b) if ks is None else list(ks)
    elif callable(b):
        b_of = b
        ks = list(DEFAULT_KS if ks is None else ks)
    else:
        raise InvalidInputError(f"b must be an array, a mapping or a function, not {type(b).__name__}")
    if not alphas:
        raise InvalidInputError("no alphas given")
    table = SweepTable()
    for k in ks:
        bk = np.asarray(b_of(k), np.float32)
        if bk.shape != a_val.shape:
            raise ShapeError(f"B for K={k} has shape {bk.shape}, A has {a_val.shape}")
        for alpha in alphas:
            fused = ensemble(a_val, bk, float(alpha))
            table.rows.append(SweepRow(float(alpha), int(k), mean_cosine(fused, targets)))
    return table
