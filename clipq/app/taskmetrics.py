"""Task metrics of exported graphs on a data directory, measured through the runtime itself.

The app hands :class:`DataTaskMetrics` to the export as ``ExportOptions.task_metrics`` (and
:func:`export_inputs` as its real example inputs), so the export stage never reads datasets.

Cosine parity says a reduced-precision graph is close; these say it is close where it matters:
VQA accuracy, text -> image Recall@5 and image -> prompt mean cosine on the test split of the data
the models were trained on, computed with the graphs of a given variant and compared with fp32.
They go through ``clipq.runtime`` (preprocessing, tokenisation, the engine each variant belongs to:
onnxruntime or OpenVINO, via :func:`clipq.runtime.engines.open_for_variants`), so they also check
that the variant works end to end.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from clipq.export import ExportInputs
from clipq.runtime.engines import open_for_variants
from clipq.runtime.manifest import Manifest
from clipq.runtime.metrics import accuracy, mean_cosine, recall_at_k
from clipq.runtime.tasks import ClipEncoder, PromptEncoder, PromptRegressor, VqaModel

log = logging.getLogger(__name__)


def export_inputs(data: str | os.PathLike[str]) -> ExportInputs:
    """Real example inputs from a data directory: test items for parity, train items for calibration."""
    from clipq.readers import World

    w = World(data, check_images=False)
    s = w.split("test" if "test" in w.splits else w.splits[-1])
    cal = w.split("train") if "train" in w.splits else s

    def texts(split: Any, n: int) -> dict[str, list[str]]:
        return {"clip": [c.text for c in split.captions[:n]], "lm": [q.question for q in split.questions[:n]],
                "prompt": list(split.prompts.values())[:n]}

    return ExportInputs(images=list(s.image_paths[:64]), texts=texts(s, 256),
                        calibration_images=list(cal.image_paths[:128]), calibration_texts=texts(cal, 512))


def export_options_for_data(data: str | os.PathLike[str] | None, *, threads: int | None = None) -> dict[str, Any]:
    """The ``ExportOptions`` fields a data directory provides: real inputs and the task-metric gate."""
    if not data:
        return {}
    return {"inputs": export_inputs(data), "task_metrics": DataTaskMetrics(data, threads=threads)}


class DataTaskMetrics:
    """``(manifest, variants) -> metrics`` on a data directory (see :func:`task_metrics`)."""

    def __init__(self, data: str | os.PathLike[str], *, limit: int = 200, threads: int | None = None,
                 split: str = "test") -> None:
        self.data, self.limit, self.threads, self.split = data, limit, threads, split

    def __call__(self, manifest: Manifest, variants: Mapping[str, str]) -> dict[str, float]:
        return task_metrics(manifest, self.data, variants, limit=self.limit, threads=self.threads, split=self.split)


def task_metrics(manifest: Manifest, data: str | os.PathLike[str], variants: Mapping[str, str], *,
                 limit: int = 200, threads: int | None = None, split: str = "test") -> dict[str, float]:
    """Measure the embedded-task metrics with the given graph variants.

    Args:
        manifest: The artifact manifest (in memory; the variants must be listed in it).
        data: A data directory (``clipq data synth`` layout, or real data in the same layout).
        variants: network -> variant to run ("fp32", "int8", "fp16").
        limit: Items per metric (the first ``limit`` of the split).
        threads: onnxruntime intra-op threads.
        split: Which split.

    Returns:
        Any of ``vqa_accuracy`` (%), ``recall@5`` (%), ``img2prompt_cos`` (mean cosine x 100) that
        the artifacts and data support.
    """
    from clipq.readers import World

    world = World(data, check_images=False)
    if split not in world.splits:
        return {}
    s = world.split(split)
    backend = open_for_variants(manifest, dict(variants), threads=threads)
    out: dict[str, float] = {}
    try:
        models = manifest.models
        enc = ClipEncoder(backend) if "clip_image" in models else None
        if enc is not None and "clip_text" in models and s.captions:
            first: dict[str, str] = {}
            for c in s.captions:
                first.setdefault(c.image, c.text)
            ids = [i for i in s.image_ids if i in first][:limit]
            if ids:
                img = enc.encode_images([s.path_of(i) for i in ids])
                txt = enc.encode_texts([first[i] for i in ids])
                out["recall@5"] = recall_at_k(txt @ img.T, np.arange(len(ids)), ks=(5,))[5]
        if enc is not None and "vqa" in models and s.questions:
            qs = s.questions[:limit]
            uniq = sorted({q.image_id for q in qs})
            emb = dict(zip(uniq, enc.encode_images([s.path_of(i) for i in uniq])))
            vqa = VqaModel(backend, encoder=enc)
            answers = vqa.ask_embeds(np.stack([emb[q.image_id] for q in qs]), [q.question for q in qs], top_k=1)
            out["vqa_accuracy"] = accuracy([a.answer for a in answers], [q.answer for q in qs])
        if "img2prompt_a" in models and "prompt_text" in models and s.prompts:
            ids = [i for i in s.image_ids if i in s.prompts][:limit]
            if ids:
                pred = PromptRegressor(backend).predict([s.path_of(i) for i in ids])
                # the target is always fp32: only the graph under test changes
                ref_backend = open_for_variants(manifest, {n: "fp32" for n in manifest.models}, threads=threads)
                truth = PromptEncoder(ref_backend).encode([s.prompts[i] for i in ids])
                ref_backend.close()
                out["img2prompt_cos"] = mean_cosine(pred, truth) * 100.0
    finally:
        backend.close()
    return out
