"""clipq.export: torch -> ONNX, graph optimisation, fp16 / int8, TensorRT engines, parity checks.

Entry point: :func:`export_artifacts` (what ``clipq export`` runs). Every graph is checked against
its PyTorch original; a failure raises :class:`clipq.runtime.errors.ParityError`.
"""

from __future__ import annotations

from .pipeline import (
    ExportInputs,
    ExportOptions,
    ExportReport,
    NetworkReport,
    TaskMetricsFn,
    build_spec,
    export_artifacts,
)

__all__ = ["ExportInputs", "ExportOptions", "ExportReport", "NetworkReport", "TaskMetricsFn", "build_spec",
           "export_artifacts"]
