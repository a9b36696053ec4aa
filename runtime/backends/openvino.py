"""In-process OpenVINO backend: the artifact's OpenVINO IR (or its ONNX graphs) on the CPU plugin.

Same contract as :class:`~clipq.runtime.backends.ort.OrtBackend` (``infer``, ``spec``, ``health``,
``close``; the same input checks), registered as the ``openvino`` engine. Variants:

- ``ov_fp32``: the IR the export wrote from the fp32 graph. It runs in bf16 where the CPU has it
  *and* the export checked that network in bf16 (``spec.meta["openvino"]["ov_fp32"]["precision"]``),
  in f32 otherwise: one IR, the precision is a compile-time hint per network;
- ``ov_int8``: the NNCF post-training int8 IR (calibrated on real inputs); the layers NNCF left in
  float follow the same precision rule;
- ``fp32``: the ONNX graph itself, read by OpenVINO's ONNX frontend (f32: nothing was checked).

Thread count (``INFERENCE_NUM_THREADS``) and ``PERFORMANCE_HINT`` come from
:class:`OpenVinoSettings` (or the matching keyword arguments): pass them explicitly, OpenVINO's
defaults differ between versions and hosts. Torch-free.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, InferenceError, MissingDependencyError
from ..manifest import Manifest, ModelSpec
from .common import InProcessModels, check_inputs

log = logging.getLogger(__name__)

__all__ = ["OV_VARIANTS", "OpenVinoBackend", "OpenVinoSettings", "bf16_capable", "compile_file", "compile_config",
           "weights_of"]

#: the variants the export writes for OpenVINO (IR files), best-first when nothing was measured
OV_VARIANTS = ("ov_int8", "ov_fp32")
PRECISIONS = ("f32", "bf16")
HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


def _ov() -> Any:
    try:
        import openvino
    except ImportError as e:
        raise MissingDependencyError("openvino", "openvino", "the OpenVINO engine") from e
    return openvino


@functools.lru_cache(maxsize=1)
def _core() -> Any:
    return _ov().Core()


@functools.lru_cache(maxsize=1)
def bf16_capable() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively here (AVX512-BF16 or AMX)."""
    try:
        return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001 - an old plugin without the property: assume not
        return False


@dataclass(frozen=True, kw_only=True)
class OpenVinoSettings:
    """How the CPU plugin compiles each network.

    Attributes:
        threads: ``INFERENCE_NUM_THREADS`` (``None``: OpenVINO's choice, every core).
        performance_hint: ``PERFORMANCE_HINT``: LATENCY (one stream: what a request-at-a-time client
            wants) or THROUGHPUT (several streams: many concurrent requests).
        num_streams: ``NUM_STREAMS`` override (``None``: what the hint implies).
        precision: Inference precision for every network ("f32" or "bf16") or a mapping network ->
            precision; ``None``: per network, what the export checked (see the module docstring).
        cache_dir: ``CACHE_DIR`` for compiled blobs (faster second start).
    """

    threads: int | None = None
    performance_hint: str = "LATENCY"
    num_streams: int | None = None
    precision: str | Mapping[str, str] | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.performance_hint.upper() not in HINTS:
            raise ValueError(f"performance_hint must be one of {HINTS}, got {self.performance_hint!r}")
        for p in (self.precision.values() if isinstance(self.precision, Mapping) else [self.precision]):
            if p is not None and p not in PRECISIONS:
                raise ValueError(f"precision must be one of {PRECISIONS}, got {p!r}")


def compile_config(settings: OpenVinoSettings, precision: str) -> dict[str, Any]:
    """The CPU plugin's compile properties for one network."""
    cfg: dict[str, Any] = {"PERFORMANCE_HINT": settings.performance_hint.upper(), "INFERENCE_PRECISION_HINT": precision}
    if settings.threads:
        cfg["INFERENCE_NUM_THREADS"] = int(settings.threads)
    if settings.num_streams:
        cfg["NUM_STREAMS"] = int(settings.num_streams)
    if settings.cache_dir:
        cfg["CACHE_DIR"] = str(settings.cache_dir)
    return cfg


def compile_file(path: str | os.PathLike[str], config: Mapping[str, Any]) -> Any:
    """Read an IR (``.xml`` + its ``.bin``) or an ONNX file and compile it for the CPU.

    Raises:
        BackendUnavailable: OpenVINO cannot read or compile it.
    """
    try:
        return _core().compile_model(str(path), "CPU", dict(config))
    except MissingDependencyError:
        raise
    except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses of its own
        raise BackendUnavailable(f"OpenVINO cannot compile {Path(path).name}: {e}") from e


def weights_of(xml_rel: str) -> str:
    """The ``.bin`` that goes with an IR's ``.xml``."""
    return xml_rel[: -len(".xml")] + ".bin" if xml_rel.endswith(".xml") else ""


class OpenVinoBackend(InProcessModels):
    """Run the artifact's networks in this process with OpenVINO's CPU plugin.

    Args:
        manifest: A loaded :class:`Manifest` or the artifact directory.
        variant: "ov_int8", "ov_fp32" or "fp32" for every model, or a mapping model -> variant;
            ``None`` picks per model: the variant the manifest's measured CPU default names when its
            engine is openvino, else the first of ov_int8, ov_fp32 the export wrote, else the ONNX
            fp32 graph. A model without the requested variant runs that default.
        threads, performance_hint, precision: Shortcuts for the :class:`OpenVinoSettings` fields.
        settings: All compile settings at once (the shortcuts override its fields).
        models: Compile only these now (``None``: lazily, each on first use).
        warmup: Run each compiled model once on dummy inputs before returning.

    Raises:
        MissingDependencyError: the openvino package is not installed.
        ArtifactError: a model is not in the manifest, or its files are missing or changed.
        BackendUnavailable: a model cannot be compiled.
    """

    def __init__(
        self,
        manifest: Manifest | str | os.PathLike[str],
        *,
        variant: str | Mapping[str, str] | None = None,
        threads: int | None = None,
        performance_hint: str | None = None,
        precision: str | Mapping[str, str] | None = None,
        settings: OpenVinoSettings | None = None,
        models: Sequence[str] | None = None,
        warmup: bool = False,
    ) -> None:
        _ov()
        self.manifest = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
        s = settings or OpenVinoSettings()
        self.settings = OpenVinoSettings(
            threads=threads if threads is not None else s.threads,
            performance_hint=performance_hint or s.performance_hint, num_streams=s.num_streams,
            precision=precision if precision is not None else s.precision, cache_dir=s.cache_dir,
        )
        self.variant = variant
        self._compiled: dict[str, Any] = {}
        self._outputs: dict[str, list[str]] = {}
        self._variants: dict[str, str] = {}
        self._precisions: dict[str, str] = {}
        self._local = threading.local()
        self._lock = threading.Lock()
        self._closed = False
        for name in models or ():
            self.compiled(name)
        if warmup:
            self.warmup(models)

    # -- choice of graph and precision -----------------------------------------------------------
    def spec(self, model: str) -> ModelSpec:
        """The model's tensor contract (from the manifest)."""
        return self.manifest.model(model)

    def default_variant(self, spec: ModelSpec) -> str:
        """What this engine runs for ``spec`` when no variant is asked for (see the class docstring)."""
        from ..records import CpuDefault

        rec = CpuDefault.of(spec, engine="openvino")
        if rec is not None:
            return rec.variant
        return next((v for v in OV_VARIANTS if v in spec.variants), "fp32")

    def variant_for(self, model: str) -> str:
        """The variant this backend runs for ``model``."""
        spec = self.spec(model)
        want = self.variant.get(model) if isinstance(self.variant, Mapping) else self.variant
        if want is None:
            return self.default_variant(spec)
        if want != "fp32" and want not in spec.variants:
            fallback = self.default_variant(spec)
            log.info("%s has no %s graph; OpenVINO runs %s", model, want, fallback)
            return fallback
        return want

    def precision_for(self, model: str, variant: str) -> str:
        """f32 or bf16: the setting's override, else bf16 only where checked by the export and native here."""
        want = self.settings.precision
        if isinstance(want, Mapping):
            want = want.get(model)
        if want is not None:
            return want
        checked = ((self.spec(model).meta.get("openvino") or {}).get(variant) or {}).get("precision", "f32")
        return "bf16" if checked == "bf16" and bf16_capable() else "f32"

    # -- compiled models -------------------------------------------------------------------------
    def compiled(self, model: str) -> Any:
        """The compiled model of ``model``, built on first use (hash-checked files)."""
        c = self._compiled.get(model)
        if c is not None:
            return c
        with self._lock:
            if self._closed:
                raise BackendUnavailable("backend is closed")
            c = self._compiled.get(model)
            if c is None:
                spec = self.spec(model)
                variant = self.variant_for(model)
                rel, path = self._graph_file(model, variant)
                for side in (weights_of(rel), rel + ".data"):  # IR weights, ONNX external data
                    if side and side in self.manifest.files:
                        self.manifest.resolve(side)
                precision = self.precision_for(model, variant)
                c = compile_file(path, compile_config(self.settings, precision))
                self._check_graph_inputs(model, rel, {n for port in c.inputs for n in port.get_names()})
                self._outputs[model] = [t.name for t in spec.outputs]
                self._compiled[model] = c
                self._variants[model] = variant
                self._precisions[model] = precision
                log.debug("compiled %s (%s, %s) with OpenVINO", model, variant, precision)
        return c

    def engine_info(self, model: str) -> dict[str, str]:
        """``{"engine", "variant", "precision"}`` of ``model`` (compiles it if needed)."""
        self.compiled(model)
        return {"engine": "openvino", "variant": self._variants[model], "precision": self._precisions[model]}

    def _request(self, model: str) -> Any:
        # one infer request per thread and model: a request is not safe to share between threads
        reqs = getattr(self._local, "requests", None)
        if reqs is None:
            reqs = self._local.requests = {}
        req = reqs.get(model)
        if req is None:
            req = reqs[model] = self.compiled(model).create_infer_request()
        return req

    # -- Backend protocol ------------------------------------------------------------------------
    def infer(self, model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``model`` on named input arrays (checked against its spec); returns named outputs.

        Raises:
            InvalidInputError, DTypeError, ShapeError: inputs that do not match the spec.
            InferenceError: OpenVINO failed while running.
        """
        spec = self.spec(model)
        feeds = check_inputs(spec, inputs)
        req = self._request(model)
        compiled = self._compiled[model]
        try:
            res = req.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
            return {n: np.asarray(res[compiled.output(n)]) for n in self._outputs[model]}
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses
            raise InferenceError(f"{model}: OpenVINO failed: {e}") from e

    def close(self) -> None:
        with self._lock:
            self._compiled.clear()
            self._local = threading.local()
            self._closed = True

    def _open(self, model: str) -> Any:
        return self.compiled(model)

    def __repr__(self) -> str:
        return (f"OpenVinoBackend({str(self.manifest.root)!r}, threads={self.settings.threads}, "
                f"hint={self.settings.performance_hint})")
