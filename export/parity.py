"""Numerical parity of exported graphs against their PyTorch originals.

Every graph the export writes is run next to the module it came from on the same inputs at
batch 1, 8 and the largest served batch. fp32 graphs must reproduce the module to
``max_abs <= 1e-4`` and per-row ``cosine >= 0.9999``; fp16 and int8 graphs to ``cosine >= 0.99``.
A graph that misses is not adopted and the export fails with :class:`ParityError` (a graph pass
that silently breaks outputs, like the transformer optimizer's "bert" fusion on the causal CLIP
text tower, is caught here).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipq.runtime.errors import ParityError


@dataclass(frozen=True)
class Tolerance:
    """Acceptance thresholds: ``max_abs`` (None = not checked) and the minimum per-row cosine."""

    min_cos: float
    max_abs: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"min_cos": self.min_cos, "max_abs": self.max_abs}


FP32 = Tolerance(min_cos=0.9999, max_abs=1e-4)
REDUCED = Tolerance(min_cos=0.99)  # fp16 and int8
#: how far one item's output may move with the items batched beside it, relative to the output's
#: largest magnitude, for a graph to be served by default. Float graphs (onnxruntime, OpenVINO) and
#: statically quantised ones stay near float rounding (about 1e-6); onnxruntime's dynamic int8
#: (per-batch activation scales) moves an image embedding by up to 1e-2: the same photo would get
#: a different vector in the index than in a query, depending on its neighbours.
BATCH_INVARIANCE_MAX_REL = 1e-4


def compare(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Max abs difference and min / mean row cosine between two [N, D] outputs.

    Raises:
        ParityError: the shapes differ or the output holds NaN / infinity.
    """
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape:
        raise ParityError(f"output shape {got.shape} differs from PyTorch's {ref.shape}")
    if not np.isfinite(got).all():
        raise ParityError("output contains NaN or infinity")
    r = ref.reshape(ref.shape[0], -1)
    g = got.reshape(got.shape[0], -1)
    cos = (r * g).sum(1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1), 1e-30)
    return {"max_abs": float(np.abs(r - g).max(initial=0.0)), "min_cos": float(cos.min(initial=1.0)),
            "mean_cos": float(cos.mean()) if cos.size else 1.0}


def check_parity(
    name: str,
    variant: str,
    run: Callable[[Mapping[str, np.ndarray]], np.ndarray],
    samples: Mapping[int, Mapping[str, np.ndarray]],
    reference: Mapping[int, np.ndarray],
    tol: Tolerance,
    *,
    raise_on_fail: bool = True,
) -> dict[str, Any]:
    """Run a graph on the samples of every batch size and compare with the reference outputs.

    Args:
        name: Network name (for messages).
        variant: "fp32", "int8", ... (for messages).
        run: Inputs -> the graph's first output.
        samples: batch size -> inputs.
        reference: batch size -> PyTorch output on those inputs.
        tol: Thresholds.
        raise_on_fail: Raise instead of returning a failed report.

    Returns:
        ``{"batches": {b: figures}, "max_abs", "min_cos", "mean_cos", "tolerance", "passed",
        "batch_invariance", "batch_invariant"}``: the last two from :func:`batch_invariance` on the
        largest batch (``batch_invariant`` is True where no batch above 1 was checked).

    Raises:
        ParityError: a batch misses the tolerance (when ``raise_on_fail``).
    """
    per: dict[str, dict[str, float]] = {}
    outs: dict[int, np.ndarray] = {}
    for b, feeds in samples.items():
        try:
            outs[b] = run(feeds)
            per[str(b)] = compare(reference[b], outs[b])
        except ParityError as e:
            if raise_on_fail:
                raise ParityError(f"{name} ({variant}) at batch {b}: {e}") from None
            per[str(b)] = {"max_abs": float("inf"), "min_cos": -1.0, "mean_cos": -1.0}
    invariance = batch_invariance(run, samples, outs.get(max(samples, default=1)))
    worst_abs = max(v["max_abs"] for v in per.values())
    worst_cos = min(v["min_cos"] for v in per.values())
    passed = worst_cos >= tol.min_cos and (tol.max_abs is None or worst_abs <= tol.max_abs)
    report = {
        "batches": per,
        "max_abs": worst_abs,
        "min_cos": worst_cos,
        "mean_cos": float(np.mean([v["mean_cos"] for v in per.values()])),
        "tolerance": tol.to_dict(),
        "passed": bool(passed),
        "batch_invariance": invariance,
        "batch_invariant": invariance is None or invariance["max_rel"] <= BATCH_INVARIANCE_MAX_REL,
    }
    if not passed and raise_on_fail:
        raise ParityError(
            f"{name} ({variant}) does not match PyTorch: max abs diff {worst_abs:.3g}, min cosine "
            f"{worst_cos:.6f} (need cosine >= {tol.min_cos}"
            + (f" and max abs <= {tol.max_abs:g})" if tol.max_abs is not None else ")")
        )
    return report


def batch_invariance(run: Callable[[Mapping[str, np.ndarray]], np.ndarray],
                     samples: Mapping[int, Mapping[str, np.ndarray]],
                     batched: np.ndarray | None = None) -> dict[str, Any] | None:
    """How much the first item's output changes between its largest batch and running alone.

    ``batched``: the graph's output on the largest batch where the caller has it (else it is run).

    Returns:
        ``{"batch", "max_abs", "max_rel", "min_cos"}`` (``max_rel``: max abs difference over the
        output's largest magnitude), or None when no sample batch holds more than one item or the
        graph fails on them (the parity check reports that).
    """
    b = max(samples, default=1)
    if b <= 1:
        return None
    try:
        together = np.asarray(run(samples[b]) if batched is None else batched, dtype=np.float64)[:1]
        alone = np.asarray(run({k: np.asarray(v)[:1] for k, v in samples[b].items()}), dtype=np.float64)
        figs = compare(together, alone)
    except Exception:  # noqa: BLE001 - a graph that fails here fails its parity batches too
        return None
    scale = float(np.abs(together).max(initial=0.0)) or 1.0
    return {"batch": int(b), "max_abs": figs["max_abs"], "max_rel": figs["max_abs"] / scale, "min_cos": figs["min_cos"]}


def batch_sizes(max_batch: int, requested: Sequence[int] | None = None) -> list[int]:
    """Batch sizes to check: 1, 8 and the largest served batch (deduplicated, ascending)."""
    sizes = requested if requested else (1, 8, max_batch)
    return sorted({int(b) for b in sizes if 1 <= int(b) <= max(max_batch, 1)})
