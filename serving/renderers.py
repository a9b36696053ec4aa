"""How each flavour writes each kind of model: a table of renderers registered by name.

A renderer has one method per model kind (:data:`clipq.serving.plan.KINDS`) that returns the
model's configuration as plain data, and one ``write_<kind>`` method that puts the model's files in
its directory. ``cpu-python`` (the tritonserver in ``nvidia-pytriton``: Python backend only) runs
every network through the ``clipq`` Python-based backend; ``gpu`` (the NGC container) runs them on
Triton's ``onnxruntime_onnx`` platform with the TensorRT accelerator, or as ``tensorrt_plan``.
Both share the helpers (image decoding, tokenisation: ``clipq`` backend, on the CPU) and the
ensembles. A new flavour is one :func:`register`-ed class.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from clipq.runtime.errors import ArtifactError
from clipq.runtime.manifest import TRITON_DTYPES, Manifest, TensorSpec, atomic_write_json

from .layout import BACKEND_NAME, TOKENIZERS_FROM_MODEL
from .pbtxt import Enum, dumps
from .plan import PlannedModel, seq_len

_WARMUP_TEXT = "a photo of a red circle on the left"
#: model kind -> input name -> file in the model's warmup/ directory
WARMUP_FILES = {"preprocess_image": {"image": "image.bin"}, "tokenize": {"text": "text.bin"}}


@dataclass(frozen=True, kw_only=True)
class RenderOptions:
    """How to render a repository. Every field has a default that suits the flavour.

    Attributes:
        flavour: A registered renderer: ``"cpu-python"`` (Python-backend models running
            onnxruntime; the tritonserver in ``nvidia-pytriton``) or ``"gpu"`` (the NGC container).
        variant: Graph variant served (``"fp32"``, ``"int8"``, ...). ``None``: each spec's
            ``default_variant`` on ``cpu-python`` (what the in-process runtime runs too), fp32
            on ``gpu`` (TensorRT picks the precision there).
        dynamic_batching: Render ``dynamic_batching`` for the networks (off: every request runs alone).
        max_queue_delay_us: How long the batcher may hold a request to grow a batch. Kept short: with
            one instance busy for tens of milliseconds, requests pile up and are batched anyway
            while it runs; the delay only matters when the instance is idle, where every
            microsecond of it is added to a lone request's latency.
        max_queue_size: Bound on queued requests per model (0: unbounded). Requests over it are
            refused with UNAVAILABLE, which clients may retry: they never ran.
        instances: Instances per network (Python backend: processes; onnxruntime: threads).
        helper_instances: Instances of the image and text helper models.
        intra_op_threads: onnxruntime intra-op threads per instance (0: onnxruntime's default, the
            number of physical cores).
        allow_spinning: Let onnxruntime's workers busy-wait between parallel sections
            (``cpu-python``). Off by default: in a server the workers share the cores with
            Triton's own threads, the Python stubs and other instances, and a spinning worker
            that is descheduled stalls the whole parallel section (measured: several times slower
            under load, barely faster when the machine is idle).
        engine: Engine of :mod:`clipq.runtime.engines` the ``clipq`` backend runs networks on
            (``cpu-python``).
        warmup: Render ``model_warmup`` so models are ready only once initialised.
        gpu_backend: ``"onnxruntime"`` (ONNX + TensorRT accelerator) or ``"tensorrt"`` (needs a
            ``plan`` variant in the manifest).
        gpu_precision: TensorRT precision for the accelerator (``FP32``, ``FP16``, ``INT8``).
        trt_cache_dir: Where the TensorRT accelerator caches its engines inside the server.
        max_pixels: Pixel limit of ``preprocess_image`` (None: the runtime's default).
        pad_multiple: Server-side tokenizers pad each request to its longest text rounded up to
            this multiple (requests in one bucket batch together; 0: always to ``max_length``).
    """

    flavour: str = "cpu-python"
    variant: str | None = None
    dynamic_batching: bool = True
    max_queue_delay_us: int = 100
    max_queue_size: int = 0
    instances: int = 1
    helper_instances: int = 1
    intra_op_threads: int = 0
    allow_spinning: bool = False
    engine: str = "onnxruntime"
    warmup: bool = True
    gpu_backend: str = "onnxruntime"
    gpu_precision: str = "FP16"
    trt_cache_dir: str = "/tmp/clipq-trt-cache"
    max_pixels: int | None = None
    pad_multiple: int = 16

    def __post_init__(self) -> None:
        if self.flavour not in RENDERERS:
            raise ValueError(f"flavour must be one of {tuple(RENDERERS)}, got {self.flavour!r}")
        if self.gpu_backend not in GPU_PLATFORMS:
            raise ValueError(f"gpu_backend must be one of {tuple(GPU_PLATFORMS)}, got {self.gpu_backend!r}")
        if self.instances < 1 or self.helper_instances < 1:
            raise ValueError("instance counts must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RenderOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class Served:
    """The graph a network directory serves (from the artifacts when rendering, read back when checking)."""

    variant: str
    sha256: str


# -- config pieces -------------------------------------------------------------------------------------
def _tensor(t: TensorSpec) -> dict[str, Any]:
    if t.dtype not in TRITON_DTYPES:
        raise ArtifactError(f"tensor {t.name!r}: dtype {t.dtype!r} has no Triton type")
    return {"name": t.name, "data_type": Enum(TRITON_DTYPES[t.dtype]), "dims": list(t.shape[1:])}


def _params(d: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": {"string_value": str(v)}} for k, v in d.items()]


def _header(model: PlannedModel) -> list[str]:
    return [f"{model.name}: {model.doc}.",
            "Rendered by clipq.serving from the artifact manifest; do not edit by hand:",
            "re-render with `clipq export --triton DIR` (or clipq.serving.render_repository)."]


# -- files -----------------------------------------------------------------------------------------------
def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link a (possibly large) artifact file into the repository; copy across filesystems."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _serialized_bytes(items: Iterable[bytes]) -> bytes:
    """Triton's raw layout of a BYTES tensor: each element as a 4-byte little-endian length + data."""
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def _warmup_png(size: int) -> bytes:
    """A small non-square PNG, so warm-up goes through decode, resize and crop."""
    import io

    import numpy as np
    from PIL import Image

    h, w = max(size, 8), max(size, 8) * 3 // 2
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(xx * 255 // w), (yy * 255 // h), np.full_like(xx, 96)], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def mini_manifest(src: Manifest, root: Path, files: Mapping[str, str], **sections: Any) -> None:
    """Write ``root/manifest.json``: a valid clipq manifest of what ``root`` holds.

    Args:
        src: The source manifest (its hashes are reused: the files were verified when linked).
        root: The directory described (a model's version directory, the shared tokenizers).
        files: Path in ``root`` -> path in the source manifest, for every file copied in.
        sections: Manifest sections (``models``, ``preprocessing``, ``tokenizers``, ...).

    Written with the source manifest's creation time and versions (not "now"), so rendering the
    same artifacts twice gives byte-identical files.
    """
    mini = Manifest(root=root, created=src.created, package_versions=dict(src.package_versions), **sections)
    mini.files = {dst: dict(src.files[s]) for dst, s in sorted(files.items())}
    atomic_write_json(root / "manifest.json", mini.to_dict())


def _keep(vdir: Path) -> None:
    (vdir / ".gitkeep").touch()  # Triton needs the version directory; git keeps no empty ones


# -- renderers -------------------------------------------------------------------------------------------
class Renderer:
    """One flavour. ``config(model)`` / ``write(model, dir)`` dispatch to the method of the model's kind.

    The helpers (``preprocess_image``, ``tokenize``) and the ensembles are the same in every flavour;
    a flavour says how networks are configured (:meth:`network`) and which graph file they get
    (:meth:`graph`).
    """

    flavour: ClassVar[str] = ""

    def __init__(self, m: Manifest, opt: RenderOptions):
        self.m = m
        self.opt = opt

    # -- dispatch
    def config(self, model: PlannedModel, served: Served | None = None) -> str:
        """The ``config.pbtxt`` text of ``model`` (``served``: for networks, the graph served)."""
        return dumps(getattr(self, model.kind)(model, served), _header(model))

    def write(self, model: PlannedModel, mdir: Path) -> None:
        """Write ``model``'s directory: its files, then its ``config.pbtxt``."""
        vdir = mdir / "1"
        vdir.mkdir(parents=True, exist_ok=True)
        served = getattr(self, f"write_{model.kind}")(model, mdir, vdir)
        (mdir / "config.pbtxt").write_text(self.config(model, served))

    def uses_backend(self, model: PlannedModel) -> bool:
        """Whether ``model`` runs on the ``clipq`` Python-based backend."""
        return self.config_head(model).get("backend") == BACKEND_NAME

    # -- shared pieces
    def config_head(self, model: PlannedModel) -> dict[str, Any]:
        """The fields that choose what runs ``model`` (backend or platform, model file)."""
        heads = {"ensemble": {"platform": "ensemble"}, "network": self.network_head()}
        return heads.get(model.kind, {"backend": BACKEND_NAME})

    def _io(self, model: PlannedModel) -> dict[str, Any]:
        return {"name": model.name, **self.config_head(model), "max_batch_size": model.max_batch_size,
                "input": [_tensor(t) for t in model.inputs], "output": [_tensor(t) for t in model.outputs]}

    def _batching(self, model: PlannedModel, *, delay_us: int) -> dict[str, Any]:
        d: dict[str, Any] = {"preferred_batch_size": model.preferred, "max_queue_delay_microseconds": delay_us}
        if self.opt.max_queue_size > 0:
            d["default_queue_policy"] = {"max_queue_size": self.opt.max_queue_size}
        return d

    def _warmup(self, model: PlannedModel) -> list[dict[str, Any]]:
        files = WARMUP_FILES.get(model.kind, {})
        inputs = []
        for t in model.inputs:
            value: dict[str, Any] = {"data_type": Enum(TRITON_DTYPES[t.dtype])}
            dims = list(t.shape[1:])
            if model.spec is not None:
                dims = [seq_len(self.m, model.spec) if d == -1 else d for d in dims]
            value["dims"] = dims
            if t.name in files:
                value["input_data_file"] = files[t.name]
            else:
                value["zero_data"] = True
            inputs.append({"key": t.name, "value": value})
        return [{"name": f"{model.name}_batch1", "batch_size": 1, "inputs": inputs}]

    def _tail(self, model: PlannedModel, cfg: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        cfg["version_policy"] = {"latest": {"num_versions": 1}}
        if self.opt.warmup:
            cfg["model_warmup"] = self._warmup(model)
        if params:
            cfg["parameters"] = _params(params)
        return cfg

    def _helper(self, model: PlannedModel, params: Mapping[str, Any]) -> dict[str, Any]:
        cfg = self._io(model)
        # helpers answer each request on its own; a zero delay only groups what already waits,
        # which saves round trips to the stub process without holding anything back
        cfg["dynamic_batching"] = self._batching(model, delay_us=0)
        cfg["instance_group"] = [{"count": self.opt.helper_instances, "kind": Enum("KIND_CPU")}]
        return self._tail(model, cfg, {"clipq_role": model.kind, **params})

    # -- one method per kind: the configuration
    def ensemble(self, model: PlannedModel, served: Served | None = None) -> dict[str, Any]:
        assert model.ensemble is not None
        cfg = self._io(model)
        cfg["ensemble_scheduling"] = {"step": [
            {"model_name": s.model, "model_version": -1,
             "input_map": [{"key": k, "value": v} for k, v in s.inputs.items()],
             "output_map": [{"key": k, "value": v} for k, v in s.outputs.items()]}
            for s in model.ensemble.steps]}
        return cfg

    def preprocess_image(self, model: PlannedModel, served: Served | None = None) -> dict[str, Any]:
        extra = {} if self.opt.max_pixels is None else {"clipq_max_pixels": self.opt.max_pixels}
        return self._helper(model, extra)

    def tokenize(self, model: PlannedModel, served: Served | None = None) -> dict[str, Any]:
        # the tokenizer files are the repository's one copy (tokenizers/), described by their own manifest
        return self._helper(model, {"clipq_tokenizer": model.tokenizer, "clipq_manifest": TOKENIZERS_FROM_MODEL,
                                    "clipq_pad_multiple": self.opt.pad_multiple})

    def network(self, model: PlannedModel, served: Served | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def network_head(self) -> dict[str, Any]:
        raise NotImplementedError

    def graph(self, model: PlannedModel) -> tuple[str, str]:
        """(variant, file name in the version directory) of the graph a network serves."""
        raise NotImplementedError

    def _network(self, model: PlannedModel, kind: str) -> dict[str, Any]:
        cfg = self._io(model)
        if self.opt.dynamic_batching:
            cfg["dynamic_batching"] = self._batching(model, delay_us=self.opt.max_queue_delay_us)
        cfg["instance_group"] = [{"count": self.opt.instances, "kind": Enum(kind)}]
        return cfg

    def _served(self, served: Served | None) -> dict[str, Any]:
        return {"clipq_sha256": served.sha256 if served else "", "clipq_variant": served.variant if served else ""}

    # -- one method per kind: the files
    def write_network(self, model: PlannedModel, mdir: Path, vdir: Path) -> Served:
        assert model.spec is not None
        variant, fname = self.graph(model)
        rel = model.spec.file_for(variant)
        src = self.m.resolve(rel)  # verifies the sha256 before the file goes anywhere
        link_or_copy(src, vdir / fname)
        spec = replace(model.spec, file=fname, variants={}, default_variant="fp32",
                       meta={**model.spec.meta, "variant": variant, "source_file": rel})
        mini_manifest(self.m, vdir, {fname: Path(rel).as_posix()}, models={model.name: spec}, dims=dict(self.m.dims))
        return Served(variant, self.m.files[Path(rel).as_posix()]["sha256"])

    def write_preprocess_image(self, model: PlannedModel, mdir: Path, vdir: Path) -> None:
        self._warmup_file(mdir, "preprocess_image", _warmup_png(int(self.m.preprocessing["size"])))
        mini_manifest(self.m, vdir, {}, preprocessing=dict(self.m.preprocessing))

    def write_tokenize(self, model: PlannedModel, mdir: Path, vdir: Path) -> None:
        self._warmup_file(mdir, "tokenize", _WARMUP_TEXT.encode())
        _keep(vdir)

    def write_ensemble(self, model: PlannedModel, mdir: Path, vdir: Path) -> None:
        _keep(vdir)

    @staticmethod
    def _warmup_file(mdir: Path, kind: str, item: bytes) -> None:
        (mdir / "warmup").mkdir(exist_ok=True)
        for name in WARMUP_FILES[kind].values():
            (mdir / "warmup" / name).write_bytes(_serialized_bytes([item]))


RENDERERS: dict[str, type[Renderer]] = {}


def register(cls: type[Renderer]) -> type[Renderer]:
    """Add a renderer to the table under its ``flavour`` (a class decorator)."""
    RENDERERS[cls.flavour] = cls
    return cls


def renderer(m: Manifest, opt: RenderOptions) -> Renderer:
    """The renderer of ``opt.flavour`` over ``m``."""
    return RENDERERS[opt.flavour](m, opt)


@register
class CpuPythonRenderer(Renderer):
    """Networks on the ``clipq`` backend: an engine of the registry inside the Python backend stub."""

    flavour = "cpu-python"

    def network_head(self) -> dict[str, Any]:
        return {"backend": BACKEND_NAME}

    def graph(self, model: PlannedModel) -> tuple[str, str]:
        assert model.spec is not None
        return self.opt.variant or model.spec.default_variant, "model.onnx"

    def network(self, model: PlannedModel, served: Served | None = None) -> dict[str, Any]:
        cfg = self._network(model, "KIND_CPU")
        return self._tail(model, cfg, {
            **self._served(served), "clipq_role": "network", "clipq_engine": self.opt.engine,
            "clipq_threads": self.opt.intra_op_threads, "clipq_spin": int(self.opt.allow_spinning),
            # the instances are KIND_CPU: no GPU provider, whatever the installed onnxruntime offers
            "clipq_providers": "CPUExecutionProvider"})


@dataclass(frozen=True)
class GpuPlatform:
    """How the ``gpu`` flavour serves a network on one Triton backend."""

    platform: str
    filename: str
    variant: str | None  # None: the chosen variant (default fp32: TensorRT picks the precision)
    accelerator: bool  # onnxruntime's TensorRT execution accelerator, with our profiles


GPU_PLATFORMS = {
    "onnxruntime": GpuPlatform("onnxruntime_onnx", "model.onnx", None, accelerator=True),
    "tensorrt": GpuPlatform("tensorrt_plan", "model.plan", "plan", accelerator=False),
}


@register
class GpuRenderer(Renderer):
    """Networks on Triton's onnxruntime (TensorRT accelerator) or TensorRT backend, ``KIND_GPU``."""

    flavour = "gpu"

    @property
    def platform(self) -> GpuPlatform:
        return GPU_PLATFORMS[self.opt.gpu_backend]

    def network_head(self) -> dict[str, Any]:
        return {"platform": self.platform.platform, "default_model_filename": self.platform.filename}

    def graph(self, model: PlannedModel) -> tuple[str, str]:
        return self.platform.variant or self.opt.variant or "fp32", self.platform.filename

    def _trt_profiles(self, model: PlannedModel) -> dict[str, str]:
        """TensorRT optimisation profile (min/opt/max shapes): the one the in-process runtime builds for."""
        from clipq.runtime.backends.ort import batch_profile, trt_shape_string

        assert model.spec is not None
        profile = batch_profile(self.m, model.spec)
        return {f"trt_profile_{k}_shapes": trt_shape_string(profile[k]) for k in ("min", "opt", "max")}

    def network(self, model: PlannedModel, served: Served | None = None) -> dict[str, Any]:
        cfg = self._network(model, "KIND_GPU")
        params: dict[str, Any] = self._served(served)
        if self.platform.accelerator:
            trt = {"precision_mode": self.opt.gpu_precision, "max_workspace_size_bytes": str(1 << 30),
                   "trt_engine_cache_enable": "1", "trt_engine_cache_path": self.opt.trt_cache_dir,
                   **self._trt_profiles(model)}
            cfg["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [
                {"name": "tensorrt", "parameters": [{"key": k, "value": v} for k, v in trt.items()]}]}}
            if self.opt.intra_op_threads:
                params["intra_op_thread_count"] = self.opt.intra_op_threads
        return self._tail(model, cfg, params)


FLAVOURS = tuple(RENDERERS)


# -- the shared tokenizers -----------------------------------------------------------------------------
def write_tokenizers(m: Manifest, kinds: Iterable[str], out: Path) -> dict[str, str]:
    """Copy each tokenizer ``kinds`` name once into ``out`` and describe them in ``out/manifest.json``.

    Tokenizers whose files are identical (same names and sha256) share one folder.

    Returns:
        Tokenizer kind -> its folder in ``out``.

    Raises:
        ArtifactError: a tokenizer has no files listed in the manifest, or one changed.
    """
    folders: dict[str, str] = {}
    by_content: dict[tuple, str] = {}
    entries: dict[str, dict[str, Any]] = {}
    copied: dict[str, str] = {}
    for kind in kinds:
        info = dict(m.tokenizers[kind])
        path = str(info["path"]).rstrip("/")
        rel_dir, leaf = (str(Path(path).parent), Path(path).name) if path.endswith(".json") else (path, "")
        listed = sorted(k for k in m.files if k.startswith(rel_dir + "/"))
        if not listed:
            raise ArtifactError(f"{m.root}: tokenizer {kind!r}: no files under {rel_dir}/ in the manifest")
        content = tuple((Path(k).relative_to(rel_dir).as_posix(), m.files[k]["sha256"]) for k in listed)
        folder = by_content.setdefault(content, kind)
        if folder == kind:  # tokenizer.json and the configs that name its special tokens
            for k in listed:
                dst = f"{folder}/{Path(k).relative_to(rel_dir).as_posix()}"
                link_or_copy(m.resolve(k), out / dst)
                copied[dst] = k
        folders[kind] = folder
        entries[kind] = {**info, "path": f"{folder}/{leaf}" if leaf else folder}
    if entries:
        mini_manifest(m, out, copied, tokenizers=entries)
    return folders
