"""Which reduced-precision variants an export keeps: the task gate applied to the manifest.

Every int8 / fp16 / OpenVINO variant is measured on the caller's task metrics
(``ExportOptions.task_metrics``) against fp32 and compared by :func:`.gate.compare_task_metrics`; a
variant that loses more than the gate allows, or cannot be measured, is removed from the manifest
and the disk, and fp32 serves instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from clipq.runtime.engines import DEFAULT_ENGINE, engine
from clipq.runtime.errors import ClipqError
from clipq.runtime.manifest import Manifest

from .gate import compare_task_metrics

if TYPE_CHECKING:
    from .pipeline import ExportOptions, ExportReport

log = logging.getLogger(__name__)


def drop_variant(m: Manifest, variant: str, networks: Sequence[str]) -> None:
    """Remove a rejected variant of ``networks`` from the manifest and the disk (an IR's .bin too)."""
    for n in networks:
        spec = m.models[n]
        rel = spec.variants.pop(variant, None)
        for f in [rel, rel[:-4] + ".bin"] if rel and rel.endswith(".xml") else [rel]:
            if f:
                m.files.pop(f, None)
                (m.root / f).unlink(missing_ok=True)
        spec.parity.pop(variant, None)
        if spec.default_variant == variant:
            spec.default_variant = "fp32"


def task_parity(m: Manifest, opts: ExportOptions, report: ExportReport) -> dict[str, Any]:
    """Gate every reduced-precision variant of ``m`` on ``opts.task_metrics`` against fp32.

    Returns:
        ``{"fp32": metrics, variant: metrics, ..., "delta": {variant: deltas}, "rejected": {variant: why}}``
        (what :attr:`ExportReport.task_metrics` holds); a rejected variant is removed from ``m``.

    Raises:
        ParityError: with ``require_int8``, the int8 graphs lose more than the gate allows.
    """
    task_metrics = opts.task_metrics
    assert task_metrics is not None
    fp32 = dict(task_metrics(m, {n: "fp32" for n in m.models}))
    out: dict[str, Any] = {"fp32": fp32}
    # the reduced-precision variants the in-process engines run (the engine registry's table)
    variants = [v for v in engine(DEFAULT_ENGINE).variants if v != "fp32"]
    if opts.openvino:
        variants += list(engine("openvino").variants)
    for variant in variants:
        chosen = {n: variant for n, s in m.models.items() if variant in s.variants}
        if not chosen:
            continue
        try:
            got = dict(task_metrics(m, chosen))
        except ClipqError as e:  # never keep a variant the gate could not measure
            if not variant.startswith("ov_"):
                raise
            log.warning("task metrics of %s could not be measured (%s): %s removed", variant, e, variant)
            drop_variant(m, variant, list(chosen))
            for n in chosen:
                m.models[n].meta["export"]["decisions"]["openvino"][variant]["rejected"] = f"task gate: {e}"
            continue
        cmp = compare_task_metrics(fp32, got, variant, raise_on_fail=False)
        if not cmp["passed"]:
            # as with parity: a variant that loses too much is not deployed (fp32 serves instead), and the
            # export goes on; require_int8 turns that into an error for int8. Seen on a Zen 3 EPYC (AVX2, no
            # VNNI), where onnxruntime's int8 kernels lost 1.5 points of VQA that AVX512-VNNI CPUs do not.
            drop_variant(m, variant, list(chosen))
            if opts.require_int8 and variant == "int8":
                compare_task_metrics(fp32, got, variant)  # raises ParityError naming the metrics
            detail = cmp["why"]
            log.warning("%s graphs lose more than the task gate allows (%s): %s not deployed, fp32 serves",
                        variant, detail, variant)
            out.setdefault("rejected", {})[variant] = {"metrics": got, "delta": cmp["delta"], "why": detail}
            for n in chosen:
                m.models[n].meta.setdefault("export", {}).setdefault("rejected", {})[variant] = f"task gate: {detail}"
            continue
        out[variant] = got
        out.setdefault("delta", {})[variant] = cmp["delta"]
        for n in chosen:
            m.models[n].parity.setdefault(variant, {})["task_metrics"] = cmp["delta"]
    return out
