"""How each flavour writes each kind of model: a table of renderers registered by name.

A renderer has one method per model kind (:data:`clipq.serving.plan.KINDS`) that returns the
model's configuration as plain data, and one ``write_<kind>`` method that puts the model's files in
its directory. ``cpu-python`` (the tritonserver in ``nvidia-pytriton``: Python backend only) runs
every network through the ``clipq`` Python-based backend; ``gpu`` (the NGC container) runs each
network as ``tensorrt_plan`` where the manifest has a ``plan`` variant of it (a TensorRT engine
the export built) and on Triton's ``onnxruntime_onnx`` platform with the TensorRT accelerator
otherwise. Both share the helpers (image decoding, tokenisation), Model B's KNN model and the
repository's description (``clipq`` backend, on the CPU) and the ensembles. A new flavour is one
:func:`register`-ed class in a module of its own (:mod:`.cpu`, :mod:`.gpu`).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from clipq.runtime.engines import DEFAULT_ENGINE
from clipq.runtime.errors import ArtifactError
from clipq.runtime.fusion import SETTINGS_KEY, Img2PromptSettings
from clipq.runtime.manifest import TRITON_DTYPES, Manifest, ModelSpec, TensorSpec, atomic_write_json
from clipq.runtime.server_path import INFO_FORMAT, INFO_SCHEMA
from clipq.runtime.specs import ENSEMBLE_HEAD

from .layout import BACKEND_NAME, TOKENIZERS_FROM_MODEL
from .pbtxt import Enum, dumps
from .plan import KNN_DIR, PIPELINE_CHOICES, PlannedModel, seq_len

_WARMUP_TEXT = "a photo of a red circle on the left"
#: model kind -> input name -> file in the model's warmup/ directory
WARMUP_FILES = {"preprocess_image": {"image": "image.bin"}, "tokenize": {"text": "text.bin"},
                "info": {"request": "request.bin"}, "fused": {"image": "image.bin", "text": "text.bin"},
                "knn": {"image_embeds": "image_embeds.bin", "a_embeds": "a_embeds.bin", "alpha": "alpha.bin",
                        "n": "n.bin"}}
#: the description ``clipq_info`` answers, in its version directory
INFO_FILE = "info.json"
#: the ensemble head graph in the KNN model's version directory
HEAD_FILE = "ensemble_head.onnx"


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
        engine: Engine of :mod:`clipq.runtime.engines` the ``clipq`` backend runs every network on
            (``cpu-python``). ``None`` (with ``variant`` ``None`` too): per network, the CPU default
            the manifest records (``spec.meta["cpu_default"]``: engine, variant and its graph, e.g.
            an OpenVINO IR), honoured at load time where the serving host's CPU flags match what
            it was measured on, onnxruntime's default variant otherwise (as
            :func:`clipq.runtime.engines.open_cpu_default` in process); networks without a record
            run onnxruntime's default variant.
        pipelines: How the bytes-in / text-in models ``embed_image`` and ``embed_text`` (and the
            reading model's ``read_image`` and ``read_text``) are served:
            ``"fused"``: one ``clipq`` model each that decodes (or tokenises) and runs the network
            in the same instance (one Python-stub hop per request); ``"ensemble"``: Triton
            ensembles of the helper model and the network model (two hops). ``None``: fused
            where the flavour runs the networks on the ``clipq`` backend (``cpu-python``),
            ensembles on ``gpu`` (the network on the GPU's own backend).
        warmup: Render ``model_warmup`` so models are ready only once initialised.
        gpu_backend: ``"auto"``: each network as ``tensorrt_plan`` where the manifest has a
            ``plan`` variant of it, else ``onnxruntime_onnx`` with the TensorRT accelerator;
            ``"onnxruntime"``: always the latter; ``"tensorrt"``: always the former (every network
            needs a ``plan`` variant); ``"openvino"``: a CPU server: every network on Triton's
            native ``openvino`` backend (``KIND_CPU``) from its OpenVINO IR (the recorded CPU
            default's IR, else ``ov_int8``, else ``ov_fp32``; the fp32 ONNX graph where the
            export wrote no IR).
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
    engine: str | None = None
    pipelines: str | None = None
    warmup: bool = True
    gpu_backend: str = "auto"
    gpu_precision: str = "FP16"
    trt_cache_dir: str = "/tmp/clipq-trt-cache"
    max_pixels: int | None = None
    pad_multiple: int = 16

    def __post_init__(self) -> None:
        if self.flavour not in RENDERERS:
            raise ValueError(f"flavour must be one of {tuple(RENDERERS)}, got {self.flavour!r}")
        if self.gpu_backend not in GPU_BACKENDS:
            raise ValueError(f"gpu_backend must be one of {GPU_BACKENDS}, got {self.gpu_backend!r}")
        if self.instances < 1 or self.helper_instances < 1:
            raise ValueError("instance counts must be at least 1")
        if self.pipelines is not None and self.pipelines not in PIPELINE_CHOICES:
            raise ValueError(f"pipelines must be one of {PIPELINE_CHOICES}, got {self.pipelines!r}")
        if self.pipelines == "fused" and self.flavour != "cpu-python":
            raise ValueError(f"pipelines='fused' runs the network on the clipq backend: only the cpu-python flavour "
                             f"does that ({self.flavour!r} serves its networks on Triton's own backends)")

    @property
    def fused(self) -> bool:
        """Whether ``embed_image`` / ``embed_text`` are fused models (see ``pipelines``)."""
        return (self.pipelines or ("fused" if self.flavour == "cpu-python" else "ensemble")) == "fused"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RenderOptions:
        known = {f.name for f in fields(cls)}
        d = dict(d)
        # records written before the option existed rendered ensembles
        d.setdefault("pipelines", "ensemble")
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


def ir_weights(rel: str) -> str:
    """The ``.bin`` that goes with an OpenVINO IR's ``.xml`` ("" for any other graph file)."""
    return rel[: -len(".xml")] + ".bin" if rel.endswith(".xml") else ""


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

    The helpers (``preprocess_image``, ``tokenize``), Model B's ``knn`` model, the ``info`` model and
    the ensembles are the same in every flavour; a flavour says how networks are configured
    (:meth:`network`, :meth:`network_head`) and which graph file they get (:meth:`graph`).
    ``plan`` is every model the repository holds (what ``clipq_info`` lists).
    """

    flavour: ClassVar[str] = ""

    def __init__(self, m: Manifest, opt: RenderOptions, plan: Mapping[str, PlannedModel] | None = None):
        self.m = m
        self.opt = opt
        self.plan = dict(plan or {})

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
        if model.kind == "ensemble":
            return {"platform": "ensemble"}
        return self.network_head(model) if model.kind == "network" else {"backend": BACKEND_NAME}

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

    def knn(self, model: PlannedModel, served: Served | None = None) -> dict[str, Any]:
        # the ensemble head is a few multiply-adds: one thread, next to the index, on the CPU
        return self._helper(model, {"clipq_engine": self.opt.engine or DEFAULT_ENGINE, "clipq_threads": 1,
                                    "clipq_providers": "CPUExecutionProvider"})

    def info(self, model: PlannedModel, served: Served | None = None) -> dict[str, Any]:
        cfg = self._io(model)
        cfg["instance_group"] = [{"count": 1, "kind": Enum("KIND_CPU")}]
        return self._tail(model, cfg, {"clipq_role": model.kind})

    def network(self, model: PlannedModel, served: Served | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def fused(self, model: PlannedModel, served: Served | None = None) -> dict[str, Any]:
        raise ArtifactError(f"{model.name}: the {self.flavour} flavour serves no fused models (pipelines='ensemble')")

    def network_head(self, model: PlannedModel) -> dict[str, Any]:
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

    def served_graphs(self, model: PlannedModel) -> tuple[ModelSpec, dict[str, str], Served]:
        """What a network's version directory holds: its spec there, file there -> artifact path, the graph served.

        One graph (:meth:`graph`), named the fp32 graph of the small manifest; a flavour that
        ships more (the ``cpu-python`` recorded CPU default and its fallback) overrides this.
        """
        assert model.spec is not None
        variant, fname = self.graph(model)
        rel = Path(model.spec.file_for(variant)).as_posix()
        spec = replace(model.spec, file=fname, variants={}, default_variant="fp32",
                       meta={**model.spec.meta, "variant": variant, "source_file": rel, "served_file": fname})
        return spec, {fname: rel}, Served(variant, self._sha(rel))

    def _sha(self, rel: str) -> str:
        return str(self.m.files[Path(rel).as_posix()]["sha256"])

    def _write_graphs(self, model: PlannedModel, vdir: Path, **sections: Any) -> Served:
        """Link the graphs of :meth:`served_graphs` (an IR with its ``.bin``) and write the small manifest."""
        assert model.spec is not None
        spec, graphs, served = self.served_graphs(model)
        files: dict[str, str] = {}
        for fname, rel in graphs.items():
            link_or_copy(self.m.resolve(rel), vdir / fname)  # resolve verifies the sha256 first
            files[fname] = rel
            if ir_weights(rel):
                link_or_copy(self.m.resolve(ir_weights(rel)), vdir / ir_weights(fname))
                files[ir_weights(fname)] = ir_weights(rel)
        mini_manifest(self.m, vdir, files, models={model.spec.name: spec}, dims=dict(self.m.dims), **sections)
        return served

    # -- one method per kind: the files
    def write_network(self, model: PlannedModel, mdir: Path, vdir: Path) -> Served:
        return self._write_graphs(model, vdir)

    def write_fused(self, model: PlannedModel, mdir: Path, vdir: Path) -> Served:
        """The network's graphs and, for an image model, the preprocessing settings; a warm-up request."""
        helper = model.fused_helper
        if helper == "preprocess_image":
            self._warmup_files(mdir, "fused", {"image": _serialized_bytes([_warmup_png(int(self.m.preprocessing["size"]))])},
                               only=("image",))
            return self._write_graphs(model, vdir, preprocessing=dict(self.m.preprocessing))
        self._warmup_files(mdir, "fused", {"text": _serialized_bytes([_WARMUP_TEXT.encode()])}, only=("text",))
        return self._write_graphs(model, vdir)

    def write_preprocess_image(self, model: PlannedModel, mdir: Path, vdir: Path) -> None:
        self._warmup_file(mdir, "preprocess_image", _warmup_png(int(self.m.preprocessing["size"])))
        mini_manifest(self.m, vdir, {}, preprocessing=dict(self.m.preprocessing))

    def write_tokenize(self, model: PlannedModel, mdir: Path, vdir: Path) -> None:
        self._warmup_file(mdir, "tokenize", _WARMUP_TEXT.encode())
        _keep(vdir)

    def write_ensemble(self, model: PlannedModel, mdir: Path, vdir: Path) -> None:
        _keep(vdir)

    def write_knn(self, model: PlannedModel, mdir: Path, vdir: Path) -> None:
        """Model B's database (``knn/``, hash-checked) and the ensemble head graph, with their manifest."""
        listed = sorted(k for k in self.m.files if k.startswith(f"{KNN_DIR}/"))
        if not listed:
            raise ArtifactError(f"{self.m.root}: no Model B ({KNN_DIR}/) in the manifest")
        files = {}
        for rel in listed:
            link_or_copy(self.m.resolve(rel), vdir / rel)
            files[rel] = rel
        models = {}
        if ENSEMBLE_HEAD in self.m.models:
            spec = self.m.models[ENSEMBLE_HEAD]
            variant = self.opt.variant or spec.default_variant
            rel = spec.file_for(variant)
            link_or_copy(self.m.resolve(rel), vdir / HEAD_FILE)
            files[HEAD_FILE] = Path(rel).as_posix()
            models[ENSEMBLE_HEAD] = replace(spec, file=HEAD_FILE, variants={}, default_variant="fp32",
                                            meta={**spec.meta, "variant": variant, "source_file": rel})
        settings = Img2PromptSettings.from_manifest(self.m)
        # the settings record travels in this model's manifest: the server's Model B reads K there
        mini = dict(models=models, dims=dict(self.m.dims))
        mini_manifest(self.m, vdir, files, **mini, extra={SETTINGS_KEY: settings.to_dict()})
        # a real query for the warm-up: unit vectors, the settings' alpha, one prompt
        d, p = (int(t.shape[-1]) for t in model.inputs[:2])
        self._warmup_files(mdir, "knn", {"image_embeds": np.eye(1, d, dtype="<f4").tobytes(),
                                         "a_embeds": np.eye(1, p, dtype="<f4").tobytes(),
                                         "alpha": np.array([settings.alpha], "<f4").tobytes(),
                                         "n": np.array([1], "<i4").tobytes()})

    def write_info(self, model: PlannedModel, mdir: Path, vdir: Path) -> None:
        """The repository's description (:func:`server_info`) as ``info.json``, listed in its own manifest."""
        (vdir / INFO_FILE).write_text(json.dumps(server_info(self.m, self.plan or {model.name: model}, self.opt),
                                                 indent=1) + "\n")
        mini = Manifest(root=vdir, created=self.m.created, package_versions=dict(self.m.package_versions))
        mini.add_file(INFO_FILE)
        atomic_write_json(vdir / "manifest.json", mini.to_dict())
        self._warmup_files(mdir, "info", {"request": _serialized_bytes([b"manifest"])})

    @staticmethod
    def _warmup_file(mdir: Path, kind: str, item: bytes) -> None:
        Renderer._warmup_files(mdir, kind, {name: _serialized_bytes([item]) for name in WARMUP_FILES[kind]})

    @staticmethod
    def _warmup_files(mdir: Path, kind: str, data: Mapping[str, bytes], only: Iterable[str] | None = None) -> None:
        """Write the raw warm-up data of each input (``data``: input name -> Triton's raw layout)."""
        (mdir / "warmup").mkdir(exist_ok=True)
        for name, fname in WARMUP_FILES[kind].items():
            if only is None or name in only:
                (mdir / "warmup" / fname).write_bytes(data[name])


def server_info(m: Manifest, plan: Mapping[str, PlannedModel], opt: RenderOptions) -> dict[str, Any]:
    """What ``clipq_info`` answers: the manifest's public facts and the models served (no paths, no weights).

    The networks' specs and graph hashes (so a client computes the same model id and checks the
    graphs served), dims, answer vocabulary, tokenizer lengths, preprocessing, the tuned
    image -> prompt settings, the reading model's candidates and text template; every model with its
    kind and batch limit; Model B's settings.
    """
    nets = {n: p.spec for n, p in plan.items() if p.kind == "network" and p.spec is not None}
    files = {rel: dict(m.files[rel]) for s in nets.values() for rel in (s.file, *s.variants.values()) if rel in m.files}
    knn = None
    if any(p.kind == "knn" for p in plan.values()):  # Model B's data; its settings are extra["img2prompt"]
        cfg = json.loads(m.resolve(f"{KNN_DIR}/knn.json").read_text(encoding="utf-8"))
        knn = {k: cfg.get(k) for k in ("count", "prompt_dim")}
    return {
        "format": INFO_FORMAT, "schema_version": INFO_SCHEMA, "flavour": opt.flavour,
        "manifest": {
            "schema_version": m.schema_version, "created": m.created, "package_versions": dict(m.package_versions),
            "preprocessing": dict(m.preprocessing), "tokenizers": {k: dict(v) for k, v in m.tokenizers.items()},
            "dims": dict(m.dims), "answer_vocab": list(m.answer_vocab),
            "models": {n: s.to_dict() for n, s in nets.items()}, "files": files,
            "extra": {**{k: m.extra[k] for k in ("clip_model_id", "reading", "family", "scores") if k in m.extra},
                      SETTINGS_KEY: Img2PromptSettings.from_manifest(m).to_dict()},
        },
        "models": {name: {"kind": p.kind, "max_batch_size": p.max_batch_size} for name, p in plan.items()},
        "knn": knn,
    }


RENDERERS: dict[str, type[Renderer]] = {}
#: how the gpu flavour serves networks (see :class:`RenderOptions`)
GPU_BACKENDS = ("auto", "onnxruntime", "tensorrt", "openvino")


def register(cls: type[Renderer]) -> type[Renderer]:
    """Add a renderer to the table under its ``flavour`` (a class decorator)."""
    RENDERERS[cls.flavour] = cls
    return cls


def renderer(m: Manifest, opt: RenderOptions, plan: Mapping[str, PlannedModel] | None = None) -> Renderer:
    """The renderer of ``opt.flavour`` over ``m`` (``plan``: every model the repository holds)."""
    return RENDERERS[opt.flavour](m, opt, plan)



# the flavours register themselves (cpu-python, the default, first); they need the classes above
from . import cpu, gpu  # noqa: E402,F401

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
