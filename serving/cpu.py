"""The ``cpu-python`` flavour: every network on the ``clipq`` Python-based backend, on the CPU.

For the tritonserver in ``nvidia-pytriton``, which has only the Python backend: each network runs
an engine of :mod:`clipq.runtime.engines` inside the backend's stub, where the manifest's recorded
CPU default is honoured at load time as in process. The helpers, Model B's KNN model,
``clipq_info`` and the ensembles are shared with every flavour
(:class:`~clipq.serving.renderers.Renderer`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from clipq.runtime.engines import CPU_DEFAULT, DEFAULT_ENGINE
from clipq.runtime.manifest import ModelSpec
from clipq.runtime.records import CPU_DEFAULT_KEY, CpuDefault

from .layout import BACKEND_NAME, TOKENIZERS_FROM_MODEL
from .plan import PlannedModel
from .renderers import Renderer, Served, register


@register
class CpuPythonRenderer(Renderer):
    """Networks on the ``clipq`` backend: an engine of the registry inside the Python backend stub.

    With neither ``engine`` nor ``variant`` forced, a network whose manifest records a CPU default
    ships that graph (e.g. ``model.xml`` + ``model.bin``, an OpenVINO IR) next to onnxruntime's
    default graph (``model.onnx``), both in its small manifest with the record, and its config
    names the engine :data:`~clipq.runtime.engines.CPU_DEFAULT`: the backend then opens
    :func:`~clipq.runtime.engines.open_cpu_default` over that manifest, so the serving host's CPU
    flags decide at load time exactly as in process (a mismatch runs ``model.onnx`` with a notice
    in the server's log).
    """

    flavour = "cpu-python"

    def network_head(self, model: PlannedModel) -> dict[str, Any]:
        return {"backend": BACKEND_NAME}

    def cpu_default(self, spec: ModelSpec) -> CpuDefault | None:
        """The recorded CPU default served for ``spec``, or None (forced options, no record, no graph)."""
        if self.opt.engine is not None or self.opt.variant is not None:
            return None
        return CpuDefault.of(spec)

    @staticmethod
    def _file_name(spec: ModelSpec, variant: str, first: bool) -> str:
        if spec.file_for(variant).endswith(".xml"):
            return "model.xml"
        return "model.onnx" if first else f"model.{variant}.onnx"

    def graph(self, model: PlannedModel) -> tuple[str, str]:
        assert model.spec is not None
        choice = self.cpu_default(model.spec)
        if choice is None:
            return self.opt.variant or model.spec.default_variant, "model.onnx"
        return choice.variant, self._chosen_name(model.spec, choice.variant)

    def _chosen_name(self, spec: ModelSpec, var: str) -> str:
        fallback = spec.default_variant
        if var == fallback:
            return "model.onnx"
        return self._file_name(spec, var, first=var == "fp32")

    def served_graphs(self, model: PlannedModel) -> tuple[ModelSpec, dict[str, str], Served]:
        spec = model.spec
        assert spec is not None
        choice = self.cpu_default(spec)
        if choice is None:
            return super().served_graphs(model)
        var = choice.variant
        fallback = spec.default_variant
        rec = choice.to_dict()
        rel_of = {v: Path(spec.file_for(v)).as_posix() for v in {var, fallback}}
        if "fp32" in (var, fallback):
            # the small manifest mirrors the source: model.onnx is the fp32 graph, the other keeps its name
            other = fallback if var == "fp32" else var
            names = {"fp32": "model.onnx"}
            if other != "fp32":
                names[other] = self._file_name(spec, other, first=False)
            small = replace(spec, file="model.onnx", variants={v: n for v, n in names.items() if v != "fp32"},
                            default_variant=fallback)
            key = var
        else:
            # onnxruntime's default is the fp32 slot of the small manifest (as without a record)
            names = {fallback: "model.onnx"}
            if var != fallback:
                names[var] = self._chosen_name(spec, var)
            small = replace(spec, file="model.onnx", variants={v: n for v, n in names.items() if v != fallback},
                            default_variant="fp32")
            key = "fp32" if var == fallback else var
        meta = {**spec.meta, "variant": var, "source_file": rel_of[var], "served_file": names[var],
                CPU_DEFAULT_KEY: {**rec, "variant": key},
                "fallback": {"engine": DEFAULT_ENGINE, "variant": fallback, "file": names[fallback]}}
        if key != var and isinstance(spec.meta.get("openvino"), Mapping) and var in spec.meta["openvino"]:
            meta["openvino"] = {**spec.meta["openvino"], key: spec.meta["openvino"][var]}
        small = replace(small, meta=meta)
        graphs = {names[v]: rel_of[v] for v in names}
        return small, graphs, Served(var, self._sha(rel_of[var]))

    def _engine_params(self, model: PlannedModel, served: Served | None) -> dict[str, Any]:
        assert model.spec is not None
        engine = self.opt.engine or (CPU_DEFAULT if self.cpu_default(model.spec) else DEFAULT_ENGINE)
        return {"clipq_engine": engine, "clipq_threads": self.opt.intra_op_threads, "clipq_spin": int(self.opt.allow_spinning),
                # the instances are KIND_CPU: no GPU provider, whatever the installed onnxruntime offers
                "clipq_providers": "CPUExecutionProvider"}

    def network(self, model: PlannedModel, served: Served | None = None) -> dict[str, Any]:
        cfg = self._network(model, "KIND_CPU")
        return self._tail(model, cfg, {**self._served(served), "clipq_role": "network",
                                       **self._engine_params(model, served)})

    def fused(self, model: PlannedModel, served: Served | None = None) -> dict[str, Any]:
        """Helper and network in one instance: batched like the network, warmed up with a real request."""
        assert model.spec is not None
        cfg = self._network(model, "KIND_CPU")
        params: dict[str, Any] = {**self._served(served), "clipq_role": "fused", "clipq_helper": model.fused_helper,
                                  "clipq_network": model.spec.name, **self._engine_params(model, served)}
        if model.fused_helper == "tokenize":
            params.update({"clipq_tokenizer": model.tokenizer, "clipq_tokenizers": TOKENIZERS_FROM_MODEL})
        elif self.opt.max_pixels is not None:
            params["clipq_max_pixels"] = self.opt.max_pixels
        return self._tail(model, cfg, params)
