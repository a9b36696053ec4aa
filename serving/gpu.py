"""The ``gpu`` flavour: networks on Triton's own GPU backends, for the NGC container.

Each network runs as a ``tensorrt_plan`` model where the manifest holds a ``plan`` variant of it (a
TensorRT engine ``clipq export --tensorrt`` built on the serving GPU), and on the
``onnxruntime_onnx`` platform with the TensorRT execution accelerator otherwise (FP16, engine cache,
the optimisation profile the in-process runtime builds for; CUDA as fallback). Both on
``KIND_GPU``. The helpers, Model B's KNN model, ``clipq_info`` and the ensembles are shared with
every flavour (:class:`~clipq.serving.renderers.Renderer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clipq.runtime.specs import PLAN_VARIANT  # registered by clipq.export.tensorrt.register_plan

from .plan import PlannedModel
from .renderers import Renderer, Served, register


@dataclass(frozen=True)
class GpuPlatform:
    """How the ``gpu`` flavour serves a network on one Triton backend."""

    platform: str
    filename: str
    variant: str | None  # None: the chosen variant (default fp32: TensorRT picks the precision)
    accelerator: bool  # onnxruntime's TensorRT execution accelerator, with our profiles


GPU_PLATFORMS = {
    "onnxruntime": GpuPlatform("onnxruntime_onnx", "model.onnx", None, accelerator=True),
    "tensorrt": GpuPlatform("tensorrt_plan", "model.plan", PLAN_VARIANT, accelerator=False),
}


@register
class GpuRenderer(Renderer):
    """Networks on Triton's TensorRT backend (a ``plan`` variant) or onnxruntime (TensorRT accelerator), ``KIND_GPU``."""

    flavour = "gpu"

    def platform(self, model: PlannedModel) -> GpuPlatform:
        """``tensorrt_plan`` for a network with a ``plan`` variant (``gpu_backend="auto"``), else onnxruntime."""
        has_plan = model.spec is not None and PLAN_VARIANT in model.spec.variants
        choice = self.opt.gpu_backend if self.opt.gpu_backend != "auto" else ("tensorrt" if has_plan else "onnxruntime")
        return GPU_PLATFORMS[choice]

    def network_head(self, model: PlannedModel) -> dict[str, Any]:
        p = self.platform(model)
        return {"platform": p.platform, "default_model_filename": p.filename}

    def graph(self, model: PlannedModel) -> tuple[str, str]:
        p = self.platform(model)
        return p.variant or self.opt.variant or "fp32", p.filename

    def _trt_profiles(self, model: PlannedModel) -> dict[str, str]:
        """TensorRT optimisation profile (min/opt/max shapes): the one the in-process runtime builds for."""
        from clipq.runtime.backends.ort import batch_profile, trt_shape_string

        assert model.spec is not None
        profile = batch_profile(self.m, model.spec)
        return {f"trt_profile_{k}_shapes": trt_shape_string(profile[k]) for k in ("min", "opt", "max")}

    def network(self, model: PlannedModel, served: Served | None = None) -> dict[str, Any]:
        cfg = self._network(model, "KIND_GPU")
        params: dict[str, Any] = self._served(served)
        if self.platform(model).accelerator:
            trt = {"precision_mode": self.opt.gpu_precision, "max_workspace_size_bytes": str(1 << 30),
                   "trt_engine_cache_enable": "1", "trt_engine_cache_path": self.opt.trt_cache_dir,
                   **self._trt_profiles(model)}
            cfg["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [
                {"name": "tensorrt", "parameters": [{"key": k, "value": v} for k, v in trt.items()]}]}}
            if self.opt.intra_op_threads:
                params["intra_op_thread_count"] = self.opt.intra_op_threads
        return self._tail(model, cfg, params)
