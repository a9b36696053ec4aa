"""The ``gpu`` flavour: networks on Triton's own GPU backends, for the NGC container.

Each network runs as a ``tensorrt_plan`` model where the manifest holds a ``plan`` variant of it (a
TensorRT engine ``clipq export --tensorrt`` built on the serving GPU), and on the
``onnxruntime_onnx`` platform with the TensorRT execution accelerator otherwise (FP16, engine cache,
the optimisation profile the in-process runtime builds for; CUDA as fallback). Both on
``KIND_GPU``. The helpers, Model B's KNN model, ``clipq_info`` and the ensembles are shared with
every flavour (:class:`~clipq.serving.renderers.Renderer`).

``gpu_backend="openvino"`` renders the same container's repository for a CPU server instead: every
network on Triton's native ``openvino`` backend (``KIND_CPU``), from its OpenVINO IR
(``model.xml`` + ``model.bin``; the fp32 ONNX graph, which that backend also reads, where the
export wrote no IR), with the backend's own parameters (``PERFORMANCE_HINT``,
``INFERENCE_NUM_THREADS``, ``HINT_BF16`` where the export checked the network in bf16).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clipq.runtime.manifest import ModelSpec
from clipq.runtime.records import CpuDefault
from clipq.runtime.specs import PLAN_VARIANT  # registered by clipq.export.tensorrt.register_plan

from .plan import PlannedModel
from .renderers import Renderer, Served, register

#: OpenVINO IR variants of the export, best first when no CPU default names one
#: (clipq.runtime.backends.openvino.OV_VARIANTS; not imported: that module is the in-process engine)
OV_IR_VARIANTS = ("ov_int8", "ov_fp32")


@dataclass(frozen=True)
class GpuPlatform:
    """How the ``gpu`` flavour serves a network on one Triton backend."""

    platform: str  # the config's "platform" (onnxruntime_onnx, tensorrt_plan) or, with backend=True, "backend"
    filename: str
    variant: str | None  # None: the chosen variant (default fp32: TensorRT picks the precision)
    accelerator: bool  # onnxruntime's TensorRT execution accelerator, with our profiles
    backend: bool = False
    instance_kind: str = "KIND_GPU"


GPU_PLATFORMS = {
    "onnxruntime": GpuPlatform("onnxruntime_onnx", "model.onnx", None, accelerator=True),
    "tensorrt": GpuPlatform("tensorrt_plan", "model.plan", PLAN_VARIANT, accelerator=False),
    "openvino": GpuPlatform("openvino", "model.xml", None, accelerator=False, backend=True, instance_kind="KIND_CPU"),
}


def ir_variant(spec: ModelSpec) -> str | None:
    """The OpenVINO IR a CPU server runs for ``spec``: the recorded CPU default's, else ov_int8, else ov_fp32."""
    rec = CpuDefault.of(spec, engine="openvino")
    if rec is not None and rec.variant in spec.variants and spec.variants[rec.variant].endswith(".xml"):
        return rec.variant
    return next((v for v in OV_IR_VARIANTS if v in spec.variants and spec.variants[v].endswith(".xml")), None)


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
        _, filename = self.graph(model)
        return {"backend" if p.backend else "platform": p.platform, "default_model_filename": filename}

    def graph(self, model: PlannedModel) -> tuple[str, str]:
        p = self.platform(model)
        if p.platform == "openvino":
            assert model.spec is not None
            ir = None if self.opt.variant else ir_variant(model.spec)
            if ir is not None:
                return ir, p.filename
            variant = self.opt.variant or "fp32"
            return variant, "model.xml" if model.spec.file_for(variant).endswith(".xml") else "model.onnx"
        return p.variant or self.opt.variant or "fp32", p.filename

    def _trt_profiles(self, model: PlannedModel) -> dict[str, str]:
        """TensorRT optimisation profile (min/opt/max shapes): the one the in-process runtime builds for."""
        from clipq.runtime.backends.ort import batch_profile, trt_shape_string

        assert model.spec is not None
        profile = batch_profile(self.m, model.spec)
        return {f"trt_profile_{k}_shapes": trt_shape_string(profile[k]) for k in ("min", "opt", "max")}

    def network(self, model: PlannedModel, served: Served | None = None) -> dict[str, Any]:
        p = self.platform(model)
        cfg = self._network(model, p.instance_kind)
        params: dict[str, Any] = self._served(served)
        if p.platform == "openvino":
            return self._tail(model, cfg, {**params, **self._openvino_params(model, served)})
        if self.platform(model).accelerator:
            trt = {"precision_mode": self.opt.gpu_precision, "max_workspace_size_bytes": str(1 << 30),
                   "trt_engine_cache_enable": "1", "trt_engine_cache_path": self.opt.trt_cache_dir,
                   **self._trt_profiles(model)}
            cfg["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [
                {"name": "tensorrt", "parameters": [{"key": k, "value": v} for k, v in trt.items()]}]}}
            if self.opt.intra_op_threads:
                params["intra_op_thread_count"] = self.opt.intra_op_threads
        return self._tail(model, cfg, params)

    def _openvino_params(self, model: PlannedModel, served: Served | None) -> dict[str, Any]:
        """Triton openvino backend parameters: one latency stream per instance, the thread count, bf16 where checked."""
        assert model.spec is not None
        out: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
        if self.opt.intra_op_threads:
            out["INFERENCE_NUM_THREADS"] = self.opt.intra_op_threads
        variant = served.variant if served else self.graph(model)[0]
        checked = ((model.spec.meta.get("openvino") or {}).get(variant) or {}).get("precision")
        if checked == "bf16":
            out["HINT_BF16"] = "YES"
        return out
