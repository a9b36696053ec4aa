"""onnxruntime's transformer optimizer, as a candidate the pipeline measures before adopting.

The optimizer fuses LayerNorm + residual (SkipLayerNormalization), GELU variants and, for graphs
whose attention pattern it recognises, whole Attention blocks into contrib ops. Whether that helps
depends on the CPU: on the 2-core AVX512-VNNI machines this was built on, the fused Attention
kernels ran slower than onnxruntime's own fusions of the plain graph, and the "bert" model type on
the causal CLIP text tower produced wrong outputs (cosine 0.91). So a fused graph is only adopted
after a parity check against PyTorch and a measured speed-up (see ``pipeline``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from clipq.runtime.errors import MissingDependencyError

from .graphs import count_ops
from .quantize import quiet_root_logger

log = logging.getLogger(__name__)

#: optimizer model type per network (the architecture its fusion patterns are written for)
MODEL_TYPES = {
    "clip_image": "clip",
    "clip_text": "clip",
    "img2prompt_a": "clip",
    "reading_image": "clip",
    "reading_text": "clip",
    "vqa": "bert",
    "prompt_text": "bert",
}
FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "BiasGelu", "FastGelu", "Gelu",
             "QuickGelu", "EmbedLayerNormalization", "SkipSimplifiedLayerNormalization", "BiasAdd")


def transformer_optimize(src: str | os.PathLike[str], dst: str | os.PathLike[str], model_type: str) -> dict[str, int]:
    """Run onnxruntime's transformer optimizer on ``src`` and write the result to ``dst``.

    Heads and hidden size are detected from the graph (``0``); onnxruntime's own offline graph
    optimisations are left to session creation (``opt_level=0``), where they run anyway.

    Returns:
        Counts of the fused op types in the result (empty when nothing was fused).
    """
    try:
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError as e:  # pragma: no cover - part of onnxruntime
        raise MissingDependencyError("onnxruntime", "runtime", "the transformer optimizer") from e
    dst = Path(dst)
    with quiet_root_logger(logging.WARNING):
        model = optimize_model(str(src), model_type=model_type, num_heads=0, hidden_size=0, opt_level=0, use_gpu=False)
        model.save_model_to_file(str(dst))
    fused = {k: v for k, v in count_ops(dst).items() if k in FUSED_OPS}
    log.info("optimizer (%s) on %s fused %s", model_type, Path(src).name, fused or "nothing")
    return fused
