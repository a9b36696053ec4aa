"""In-process onnxruntime backend: sessions built from the artifact manifest.

The backend moves tensors and nothing else (pre/post-processing lives in ``clipq.runtime.tasks``).
Execution providers are chosen best-first among those the installed onnxruntime offers: TensorRT
(fp16 engines, optimisation profiles for the served batch range, engine cache on disk), then CUDA
(the fp16 graph when the artifact has one), then CPU (the manifest's default variant, int8 for the
embedded models). Sessions are created lazily, once per model, and are safe to share between
threads (``InferenceSession.run`` is thread-safe).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, InferenceError, MissingDependencyError
from ..manifest import Manifest, ModelSpec
from .common import InProcessModels, check_inputs, dummy_inputs

__all__ = ["OrtBackend", "check_inputs", "choose_providers", "dummy_inputs", "session_options"]  # shared helpers re-exported

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
#: Best first. Anything else the user names explicitly is passed through as given.
PROVIDER_PREFERENCE = (TENSORRT, CUDA, CPU)

_GRAPH_OPT = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - a base dependency
        raise MissingDependencyError("onnxruntime", "runtime", "in-process inference") from e
    return onnxruntime


def session_options(threads: int | None = None, *, spin: bool | None = None, graph_optimization: str = "all") -> Any:
    """The one place clipq builds onnxruntime ``SessionOptions`` (runtime, Triton model, export, bench).

    Args:
        threads: intra-op threads (``None``: onnxruntime's default, one per core).
        spin: whether idle worker threads busy-wait (``None``: onnxruntime's default). Off costs a
            little latency and frees the cores for other processes (and for engines timed next).
        graph_optimization: disable, basic, extended or all.

    Raises:
        ValueError: an unknown optimisation level.
    """
    if graph_optimization not in _GRAPH_OPT:
        raise ValueError(f"graph_optimization must be one of {list(_GRAPH_OPT)}, got {graph_optimization!r}")
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _GRAPH_OPT[graph_optimization])
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1  # the graphs are chains: inter-op parallelism only adds contention
    if threads:
        so.intra_op_num_threads = int(threads)
    if spin is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.log_severity_level = 3  # errors only: CPU-only hosts otherwise log provider warnings per session
    return so


def choose_providers(requested: Sequence[str] | None = None, available: Sequence[str] | None = None) -> list[str]:
    """Pick execution providers, best first.

    Args:
        requested: Provider names the caller wants, in order; ``None`` = every available one of
            TensorRT, CUDA, CPU. CPU is appended as the fallback when missing.
        available: What onnxruntime offers (default: ``onnxruntime.get_available_providers()``).

    Returns:
        Provider names in priority order, all available.

    Raises:
        BackendUnavailable: none of the requested providers is available, nor the CPU fallback.
    """
    if available is None:
        available = _ort().get_available_providers()
    if requested is None:
        chosen = [p for p in PROVIDER_PREFERENCE if p in available]
    else:
        missing = [p for p in requested if p not in available]
        chosen = [p for p in requested if p in available]
        if missing:
            log.warning("execution providers not available here, skipped: %s", ", ".join(missing))
        if not chosen and CPU not in available:
            raise BackendUnavailable(
                f"none of the requested execution providers {list(requested)} is available"
                f" (available: {', '.join(available)})"
            )
    if CPU not in chosen and CPU in available:
        chosen.append(CPU)
    return chosen


def batch_profile(manifest: Manifest, spec: ModelSpec, opt_batch: int | None = None) -> dict[str, dict[str, tuple]]:
    """Optimisation-profile shapes (min / opt / max) for every input of ``spec``.

    The batch axis runs from 1 to ``spec.max_batch_size`` (opt: the largest preferred batch not over
    it); a dynamic sequence axis from 1 to the tokenizer's ``max_length`` (opt: half of it).

    Returns:
        ``{"min": {input: shape}, "opt": {...}, "max": {...}}``.
    """
    max_b = int(spec.max_batch_size)
    pref = [b for b in spec.preferred_batch_sizes if b <= max_b]
    opt_b = int(opt_batch or (max(pref) if pref else max_b))
    tok = (manifest.tokenizers or {}).get(spec.meta.get("tokenizer", ""), {})
    max_len = int(tok.get("max_length", 77))
    out: dict[str, dict[str, tuple]] = {"min": {}, "opt": {}, "max": {}}
    for t in spec.inputs:
        for key, b, seq in (("min", 1, 1), ("opt", opt_b, max(1, max_len // 2)), ("max", max_b, max_len)):
            dims = [b if i == 0 else (seq if d < 0 else d) for i, d in enumerate(t.shape)]
            out[key][t.name] = tuple(int(d) for d in dims)
    return out


def trt_shape_string(shapes: Mapping[str, tuple]) -> str:
    """TensorRT's profile-shape syntax, ``name:1x3x224x224,other:1x77`` (onnxruntime's TRT EP and trtexec)."""
    return ",".join(f"{n}:{'x'.join(str(d) for d in s)}" for n, s in shapes.items())


@functools.lru_cache(maxsize=1)
def gpu_fingerprint() -> dict[str, str]:
    """Name and compute capability of GPU 0 and the TensorRT version, without torch.

    Returns an empty dict where no NVIDIA GPU is visible.
    """
    info: dict[str, str] = {}
    try:
        r = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader", "-i", "0"],
            capture_output=True, text=True, timeout=10, check=True,
        )
        name, cap, driver = (s.strip() for s in r.stdout.strip().split(",")[:3])
        info.update(gpu=name, compute_capability=cap, driver=driver)
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}
    from importlib import metadata

    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-libs", "tensorrt-cu12-libs"):
        try:
            info["tensorrt"] = metadata.version(dist)
            break
        except metadata.PackageNotFoundError:
            continue
    return info


def trt_cache_key(model_sha256: str, profile: Mapping[str, Any], fp16: bool = True,
                  fingerprint: Mapping[str, str] | None = None) -> str:
    """Cache key of a TensorRT engine: GPU, TensorRT version, profile, precision and the graph.

    Engines are specific to a GPU model and a TensorRT version, and an engine built for one
    profile does not serve another, so all of these go into the key: a restart on the same machine
    finds its engines, a different GPU or upgrade rebuilds instead of loading a wrong engine.
    """
    fp = dict(fingerprint if fingerprint is not None else gpu_fingerprint())
    blob = json.dumps(
        {"gpu": fp.get("gpu", "?"), "cc": fp.get("compute_capability", "?"), "trt": fp.get("tensorrt", "?"),
         "profile": {k: {n: list(s) for n, s in v.items()} for k, v in profile.items()},
         "fp16": bool(fp16), "graph": model_sha256},
        sort_keys=True,
    )
    gpu = "".join(c if c.isalnum() else "-" for c in fp.get("gpu", "gpu")).strip("-").lower()
    return f"{gpu}-trt{fp.get('tensorrt', 'x')}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def tensorrt_provider_options(manifest: Manifest, spec: ModelSpec, cache_root: str | os.PathLike[str], *,
                              fp16: bool = True, opt_batch: int | None = None) -> dict[str, Any]:
    """Options for onnxruntime's TensorRT execution provider for one model.

    Engines and timing caches go to ``cache_root/<trt_cache_key>``, so a restart reuses them.
    """
    profile = batch_profile(manifest, spec, opt_batch)
    sha = manifest.files.get(spec.file, {}).get("sha256", "")
    cache_dir = Path(cache_root) / trt_cache_key(sha, profile, fp16)
    cache_dir.mkdir(parents=True, exist_ok=True)
    return {
        "trt_fp16_enable": bool(fp16),
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache_dir),
        "trt_profile_min_shapes": trt_shape_string(profile["min"]),
        "trt_profile_opt_shapes": trt_shape_string(profile["opt"]),
        "trt_profile_max_shapes": trt_shape_string(profile["max"]),
    }


class OrtBackend(InProcessModels):
    """Run the artifact's ONNX graphs in this process with onnxruntime.

    Args:
        manifest: A loaded :class:`Manifest` or the artifact directory.
        variant: Graph variant for every model ("fp32", "int8", "fp16"), or a mapping model ->
            variant; ``None`` picks per model: the fp16 graph on CUDA, the fp32 graph on TensorRT
            (which builds fp16 engines itself), ``spec.default_variant`` on CPU. A model without the
            requested variant runs its default one.
        threads: Intra-op threads per session (``None``: onnxruntime's default, one per core).
        providers: Execution providers in priority order (``None``: best available first).
        graph_optimization: onnxruntime graph optimisation level: disable, basic, extended, all.
        models: Create only these sessions (``None``: lazily, each on first use).
        warmup: Run each created session once on dummy inputs before returning.
        trt_cache_dir: Where TensorRT engines are cached (default ``<artifacts>/trt_cache``).
        spin: Whether onnxruntime's worker threads busy-wait between ops (``None``: its default).
            Turning it off costs a little latency and frees the CPU for other processes.

    Raises:
        ArtifactError: a model is not in the manifest, or its graph file is missing or changed.
        BackendUnavailable: a session cannot be created.
    """

    def __init__(
        self,
        manifest: Manifest | str | os.PathLike[str],
        *,
        variant: str | Mapping[str, str] | None = None,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        graph_optimization: str = "all",
        models: Sequence[str] | None = None,
        warmup: bool = False,
        trt_cache_dir: str | os.PathLike[str] | None = None,
        spin: bool | None = None,
    ) -> None:
        self.manifest = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
        if graph_optimization not in _GRAPH_OPT:
            raise ValueError(f"graph_optimization must be one of {list(_GRAPH_OPT)}, got {graph_optimization!r}")
        self.variant = variant
        self.threads = threads
        self.providers = choose_providers(providers)
        self.graph_optimization = graph_optimization
        self.trt_cache_dir = Path(trt_cache_dir) if trt_cache_dir else self.manifest.root / "trt_cache"
        self.spin = spin
        self._sessions: dict[str, Any] = {}
        self._variants: dict[str, str] = {}
        self._lock = threading.Lock()
        self._closed = False
        for name in models or ():
            self.session(name)
        if warmup:
            self.warmup(models)

    # -- sessions --------------------------------------------------------------------------------
    def spec(self, model: str) -> ModelSpec:
        """The model's tensor contract (from the manifest)."""
        return self.manifest.model(model)

    def variant_for(self, model: str) -> str:
        """The graph variant this backend runs for ``model`` (see the class docstring)."""
        spec = self.spec(model)
        want = self.variant.get(model) if isinstance(self.variant, Mapping) else self.variant
        if want is None:
            if self.providers[0] == CUDA and "fp16" in spec.variants:
                want = "fp16"
            elif self.providers[0] == TENSORRT:
                want = "fp32"
            else:
                want = spec.default_variant
        if want != "fp32" and want not in spec.variants:
            log.info("%s has no %s graph; running %s", model, want, spec.default_variant)
            want = spec.default_variant
        return want

    def _session_options(self) -> Any:
        return session_options(self.threads, spin=self.spin, graph_optimization=self.graph_optimization)

    def _provider_list(self, spec: ModelSpec, variant: str) -> list[Any]:
        out: list[Any] = []
        for p in self.providers:
            if p == TENSORRT:
                if variant != "fp32":
                    continue  # TensorRT builds its own fp16 engine from the fp32 graph
                out.append((p, tensorrt_provider_options(self.manifest, spec, self.trt_cache_dir)))
            else:
                out.append(p)
        return out

    def session(self, model: str) -> Any:
        """The onnxruntime session of ``model``, created on first use (hash-checked graph file)."""
        sess = self._sessions.get(model)
        if sess is not None:
            return sess
        with self._lock:
            if self._closed:
                raise BackendUnavailable("backend is closed")
            sess = self._sessions.get(model)
            if sess is None:
                spec = self.spec(model)
                variant = self.variant_for(model)
                rel, path = self._graph_file(model, variant)
                self._verify_external_data(rel)
                ort = _ort()
                try:
                    sess = ort.InferenceSession(
                        str(path), sess_options=self._session_options(),
                        providers=self._provider_list(spec, variant),
                    )
                except Exception as e:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
                    raise BackendUnavailable(f"cannot create an onnxruntime session for {rel}: {e}") from e
                self._check_graph_inputs(model, rel, {i.name for i in sess.get_inputs()})
                self._sessions[model] = sess
                self._variants[model] = variant
                log.debug("loaded %s (%s) on %s", model, variant, sess.get_providers()[0])
        return sess

    def _verify_external_data(self, rel: str) -> None:
        # large graphs keep their weights in "<file>.data"; check it too when the manifest lists it
        for suffix in (".data", "_data"):
            if rel + suffix in self.manifest.files:
                self.manifest.resolve(rel + suffix)

    def active_providers(self, model: str) -> list[str]:
        """Providers of ``model``'s session, in the order onnxruntime uses them."""
        return list(self.session(model).get_providers())

    # -- Backend protocol ------------------------------------------------------------------------
    def infer(self, model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``model`` on named input arrays (checked against its spec); returns named outputs.

        Raises:
            InvalidInputError, DTypeError, ShapeError: inputs that do not match the spec.
            InferenceError: onnxruntime failed while running.
        """
        spec = self.spec(model)
        feeds = check_inputs(spec, inputs)
        sess = self.session(model)
        names = [t.name for t in spec.outputs]
        try:
            outs = sess.run(names, feeds)
        except Exception as e:  # noqa: BLE001
            raise InferenceError(f"{model}: onnxruntime failed: {e}") from e
        return dict(zip(names, outs))

    def close(self) -> None:
        with self._lock:
            self._sessions.clear()
            self._closed = True

    def _open(self, model: str) -> Any:
        return self.session(model)

    def __repr__(self) -> str:
        return f"OrtBackend({str(self.manifest.root)!r}, providers={self.providers}, threads={self.threads})"
