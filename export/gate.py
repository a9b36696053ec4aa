"""The task-metric gate: a reduced-precision variant may lose at most a point against fp32.

The metrics themselves are measured by the caller (``ExportOptions.task_metrics``; the app measures
them on the user's data through the runtime), so the export never reads datasets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clipq.runtime.errors import ParityError

#: metric -> largest allowed drop against fp32, in points (percent, or cosine x 100)
MAX_DROP = {"vqa_accuracy": 1.0, "recall@5": 1.0, "img2prompt_cos": 1.0}


def compare_task_metrics(fp32: Mapping[str, float], other: Mapping[str, float], variant: str,
                         *, raise_on_fail: bool = True) -> dict[str, Any]:
    """Differences of ``other`` against ``fp32``; raise when a metric drops more than allowed.

    Raises:
        ParityError: a metric is more than :data:`MAX_DROP` points below fp32.
    """
    deltas = {k: float(other[k] - fp32[k]) for k in fp32 if k in other}
    failed = {k: d for k, d in deltas.items() if -d > MAX_DROP.get(k, 1.0)}
    detail = ", ".join(f"{k} {fp32[k]:.2f} -> {other[k]:.2f}" for k in failed)
    report = {"fp32": dict(fp32), variant: dict(other), "delta": deltas, "passed": not failed, "why": detail}
    if failed and raise_on_fail:
        raise ParityError(f"{variant} graphs lose more than 1 point on the embedded tasks: {detail}")
    return report
