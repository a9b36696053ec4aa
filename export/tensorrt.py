"""TensorRT fp16 engines from the exported ONNX graphs, cached on disk.

Two builders, tried in this order:

1. the ``tensorrt`` Python API: one serialized engine (``.plan``) per network with an optimisation
   profile covering the served batch range (and the tokenizer's sequence range), written to
   ``<artifacts>/trt_cache/<key>/<network>.plan`` and registered in the manifest as the network's
   ``plan`` variant (:func:`register_plan`: file, profile, cache key, TensorRT version); the gpu
   flavour of the Triton repository serves it with ``tensorrt_plan``;
2. onnxruntime's TensorRT execution provider, with its engine cache in the same keyed directory:
   the engines are built by running each network once at the profile's min, opt and max shapes.
   Those are onnxruntime's own cache files, not plans Triton can load: no variant is registered,
   and the gpu flavour serves the ONNX graph with the TensorRT accelerator instead.

The key (``clipq.runtime.backends.ort.trt_cache_key``) holds the GPU model and compute capability,
the TensorRT version, the profile, the precision and the graph's sha256, so a restart finds its
engines and any change rebuilds instead of loading an engine built for something else.
Where no NVIDIA GPU is visible the export says so and does nothing else.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipq.runtime.backends.ort import TENSORRT, batch_profile, gpu_fingerprint, trt_cache_key
from clipq.runtime.errors import ArtifactError
from clipq.runtime.manifest import Manifest
from clipq.runtime.specs import PLAN_VARIANT

log = logging.getLogger(__name__)

CACHE_DIR = "trt_cache"


@dataclass
class TensorRTStatus:
    """What ``--tensorrt`` can do on this machine."""

    available: bool
    builder: str  # "tensorrt", "onnxruntime-trt" or ""
    reason: str
    fingerprint: dict[str, str] = field(default_factory=dict)


def tensorrt_status() -> TensorRTStatus:
    """Check for a GPU and a TensorRT builder, without importing torch."""
    fp = gpu_fingerprint()
    if not fp:
        return TensorRTStatus(False, "", "no NVIDIA GPU visible (nvidia-smi not found or failed)")
    try:
        import tensorrt  # noqa: F401

        return TensorRTStatus(True, "tensorrt", "tensorrt Python API", fp)
    except ImportError:
        pass
    try:
        import onnxruntime as ort

        if TENSORRT in ort.get_available_providers():
            return TensorRTStatus(True, "onnxruntime-trt", "onnxruntime TensorRT execution provider", fp)
    except ImportError:  # pragma: no cover
        pass
    return TensorRTStatus(False, "", f"GPU {fp.get('gpu')} found, but neither the tensorrt package nor "
                                     "onnxruntime-gpu with TensorRT is installed", fp)


def _build_with_tensorrt(onnx_path: Path, plan: Path, profile: dict[str, dict[str, tuple]],
                         workspace_bytes: int) -> None:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)  # implicit in TensorRT >= 10
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads external data next to the file too
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ArtifactError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    config.set_flag(trt.BuilderFlag.FP16)
    prof = builder.create_optimization_profile()
    for name in profile["min"]:
        prof.set_shape(name, profile["min"][name], profile["opt"][name], profile["max"][name])
    config.add_optimization_profile(prof)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise ArtifactError(f"TensorRT failed to build an engine for {onnx_path.name}")
    tmp = plan.with_suffix(".plan.tmp")
    tmp.write_bytes(bytes(engine))
    os.replace(tmp, plan)


def register_plan(manifest: Manifest, name: str, plan: str | os.PathLike[str], *, key: str,
                  profile: dict[str, dict[str, Any]], tensorrt_version: str, builder: str = "tensorrt",
                  fingerprint: dict[str, str] | None = None) -> str:
    """List a built engine in the manifest as the ``plan`` variant of network ``name``.

    The file (under the artifact directory) is hashed like every artifact file; the spec records
    under ``meta["plan"]`` what the engine was built for, so a server (or a reader) can tell
    whether it fits its GPU and TensorRT.

    Args:
        manifest: The artifact manifest (saved by the caller, as the export does).
        name: The network.
        plan: The engine file, inside ``manifest.root``.
        key: Its cache key (:func:`clipq.runtime.backends.ort.trt_cache_key`).
        profile: The optimisation profile it was built with (``min``/``opt``/``max`` -> input -> shape).
        tensorrt_version: The TensorRT version that built it (engines load only with that version).
        builder: What built it.
        fingerprint: GPU name and compute capability (:func:`gpu_fingerprint`).

    Returns:
        The engine's path relative to the artifact root.

    Raises:
        ArtifactError: no such network, or the file is missing or outside the artifact directory.
    """
    spec = manifest.model(name)
    path = Path(plan)
    try:
        rel = path.resolve().relative_to(Path(manifest.root).resolve()).as_posix()
    except ValueError:
        raise ArtifactError(f"engine {path} is not inside the artifact directory {manifest.root}") from None
    rel = manifest.add_file(rel)
    spec.variants[PLAN_VARIANT] = rel
    fp = dict(fingerprint or {})
    spec.meta = {**spec.meta, PLAN_VARIANT: {
        "key": key, "tensorrt": str(tensorrt_version), "builder": builder, "gpu": fp.get("gpu", ""),
        "compute_capability": fp.get("compute_capability", ""),
        "profile": {k: {n: [int(d) for d in s] for n, s in v.items()} for k, v in profile.items()}}}
    return rel


def _tensorrt_version(status: TensorRTStatus) -> str:
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except ImportError:
        return status.fingerprint.get("tensorrt", "")


def build_engines(manifest: Manifest, names: list[str] | None = None, *, workspace_gb: float = 4.0,
                  status: TensorRTStatus | None = None) -> dict[str, Any]:
    """Build (or find in the cache) fp16 engines for the manifest's networks.

    Args:
        manifest: The artifact manifest, after the ONNX export.
        names: Networks to build (default: every exported one).
        workspace_gb: TensorRT builder workspace.
        status: A precomputed :func:`tensorrt_status` (default: detect now).

    Returns:
        ``{"status": ..., "engines": {name: {"key", "engine", "cached", ...}}}``; where no GPU or
        TensorRT is present, only the status with its reason, and nothing is built. Engines the
        ``tensorrt`` builder writes are registered as ``plan`` variants (:func:`register_plan`).
    """
    status = status or tensorrt_status()
    out: dict[str, Any] = {"status": status.reason, "available": status.available, "engines": {}}
    if not status.available:
        log.warning("--tensorrt: %s; no engines built", status.reason)
        return out
    names = names or [n for n, s in manifest.models.items() if s.file]
    root = manifest.root / CACHE_DIR
    if status.builder == "onnxruntime-trt":
        from clipq.runtime.backends.ort import OrtBackend, dummy_inputs

        backend = OrtBackend(manifest, variant="fp32", providers=[TENSORRT], trt_cache_dir=root)
        for name in names:
            spec = manifest.model(name)
            prof = batch_profile(manifest, spec)
            for key in ("min", "opt", "max"):  # building happens on the first run of each shape
                b = next(iter(prof[key].values()))[0]
                seq = max((s[1] for t, s in prof[key].items() if len(s) == 2 and t != "image_embeds"), default=8)
                backend.infer(name, dummy_inputs(spec, b, seq))
            key = trt_cache_key(manifest.files[spec.file]["sha256"], prof, True, status.fingerprint)
            out["engines"][name] = {"key": key, "engine": f"{CACHE_DIR}/{key}", "builder": status.builder,
                                    "variant": None}  # onnxruntime's cache: not a plan Triton loads
        backend.close()
        return out
    version = _tensorrt_version(status)
    for name in names:
        spec = manifest.model(name)
        prof = batch_profile(manifest, spec)
        key = trt_cache_key(manifest.files[spec.file]["sha256"], prof, True, status.fingerprint)
        plan = root / key / f"{name}.plan"
        cached = plan.is_file()
        if not cached:
            plan.parent.mkdir(parents=True, exist_ok=True)
            log.info("building TensorRT engine for %s (profile batch 1..%d)", name, spec.max_batch_size)
            _build_with_tensorrt(manifest.resolve(spec.file), plan, prof, int(workspace_gb * (1 << 30)))
        rel = register_plan(manifest, name, plan, key=key, profile=prof, tensorrt_version=version,
                            builder=status.builder, fingerprint=status.fingerprint)
        out["engines"][name] = {"key": key, "engine": rel, "cached": cached, "builder": status.builder,
                                "variant": PLAN_VARIANT, "tensorrt": version,
                                "profile": {k: {n: list(s) for n, s in v.items()} for k, v in prof.items()}}
    return out
