"""Render a Triton model repository from an artifact manifest (the one source of truth).

Every ``config.pbtxt`` is generated from the manifest's model specs: tensor names, dtypes and
shapes, ``max_batch_size`` and preferred batch sizes come from :mod:`clipq.runtime.specs` through
the manifest, preprocessing and tokenizer settings from the manifest's sections. Nothing is
copied by hand, so an exported model and its server configuration cannot drift apart.

Repository layout (``cpu-python`` flavour)::

    clipq_repository.json           how it was rendered (options, source manifest subset); Triton
                                    ignores files at the repository root
    clip_image/config.pbtxt         backend "python", dynamic batching, warm-up, version policy
    clip_image/1/model.py           serving/python_models/model.py, copied verbatim
    clip_image/1/manifest.json      the model's own small manifest: spec + sha256 of model.onnx
    clip_image/1/model.onnx         hard link to (or copy of) the artifact's graph
    preprocess_image/...            bytes -> pixel_values (manifest.preprocessing)
    tokenize_clip/1/tokenizer/...   text -> ids/mask (manifest.tokenizers["clip"])
    embed_image/config.pbtxt        ensembles: platform "ensemble", no files
    embed_image/1/                  (empty version directory, required by Triton)

Each model directory is self-contained (no path points back into the artifact directory), so the
repository can be copied to object storage or mounted into the NGC container as it is.

The ``gpu`` flavour renders the networks for Triton's ``onnxruntime_onnx`` platform (TensorRT
accelerator, CUDA fallback, ``KIND_GPU``) or, where the manifest has a ``plan`` variant, for
``tensorrt_plan``; the image and text helpers stay Python-backend models on the CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from clipq.runtime import specs
from clipq.runtime.errors import ArtifactError
from clipq.runtime.manifest import TRITON_DTYPES, Manifest, ModelSpec, TensorSpec, atomic_write_json

from .pbtxt import Enum, dumps

FLAVOURS = ("cpu-python", "gpu")
REPOSITORY_FILE = "clipq_repository.json"
REPOSITORY_SCHEMA = 1
MODEL_PY = Path(__file__).with_name("python_models") / "model.py"

PREPROCESS_IMAGE = "preprocess_image"
#: tokenizer kind (manifest.tokenizers key) -> Triton model name
TOKENIZE = {"clip": "tokenize_clip", "lm": "tokenize_lm", "prompt": "tokenize_prompt"}
_WARMUP_TEXT = "a photo of a red circle on the left"
#: model kind -> input name -> file in the model's warmup/ directory
_WARMUP_FILES = {"preprocess_image": {"image": "image.bin"}, "tokenize": {"text": "text.bin"}}


@dataclass(frozen=True, kw_only=True)
class RenderOptions:
    """How to render a repository. Every field has a default that suits the flavour.

    Attributes:
        flavour: ``"cpu-python"`` (Python-backend models running onnxruntime; the tritonserver in
            ``nvidia-pytriton``) or ``"gpu"`` (the NGC tritonserver container).
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
    warmup: bool = True
    gpu_backend: str = "onnxruntime"
    gpu_precision: str = "FP16"
    trt_cache_dir: str = "/tmp/clipq-trt-cache"
    max_pixels: int | None = None
    pad_multiple: int = 16

    def __post_init__(self) -> None:
        if self.flavour not in FLAVOURS:
            raise ValueError(f"flavour must be one of {FLAVOURS}, got {self.flavour!r}")
        if self.gpu_backend not in ("onnxruntime", "tensorrt"):
            raise ValueError(f"gpu_backend must be 'onnxruntime' or 'tensorrt', got {self.gpu_backend!r}")
        if self.instances < 1 or self.helper_instances < 1:
            raise ValueError("instance counts must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RenderOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class Step:
    """One ensemble step: composing model, its input <- ensemble tensor, its output -> ensemble tensor."""

    model: str
    inputs: Mapping[str, str]
    outputs: Mapping[str, str]


@dataclass(frozen=True)
class EnsembleDef:
    name: str
    doc: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    steps: tuple[Step, ...]


_PIX = Step(PREPROCESS_IMAGE, {"image": "image"}, {"pixel_values": "pixel_values"})
_IDS = {"input_ids": "input_ids", "attention_mask": "attention_mask"}

ENSEMBLES: tuple[EnsembleDef, ...] = (
    EnsembleDef("embed_image", "encoded image bytes -> L2-normalised CLIP image embedding",
                ("image",), ("image_embeds",),
                (_PIX, Step(specs.CLIP_IMAGE, {"pixel_values": "pixel_values"}, {"image_embeds": "image_embeds"}))),
    EnsembleDef("embed_text", "UTF-8 text -> L2-normalised CLIP text embedding",
                ("text",), ("text_embeds",),
                (Step(TOKENIZE["clip"], {"text": "text"}, _IDS),
                 Step(specs.CLIP_TEXT, _IDS, {"text_embeds": "text_embeds"}))),
    EnsembleDef("ask", "image bytes + question -> probabilities over manifest.answer_vocab",
                ("image", "question"), ("probs",),
                (_PIX, Step(specs.CLIP_IMAGE, {"pixel_values": "pixel_values"}, {"image_embeds": "image_embeds"}),
                 Step(TOKENIZE["lm"], {"text": "question"}, _IDS),
                 Step(specs.VQA, {"image_embeds": "image_embeds", **_IDS}, {"probs": "probs"}))),
    EnsembleDef("describe", "image bytes -> prompt embedding of Model A + CLIP embedding for Model B's KNN",
                ("image",), ("prompt_embeds", "image_embeds"),
                (_PIX, Step(specs.IMG2PROMPT_A, {"pixel_values": "pixel_values"}, {"prompt_embeds": "prompt_embeds"}),
                 Step(specs.CLIP_IMAGE, {"pixel_values": "pixel_values"}, {"image_embeds": "image_embeds"}))),
    EnsembleDef("embed_prompt", "UTF-8 prompt -> all-MiniLM-L6-v2 sentence embedding",
                ("text",), ("sentence_embeds",),
                (Step(TOKENIZE["prompt"], {"text": "text"}, _IDS),
                 Step(specs.PROMPT_TEXT, _IDS, {"sentence_embeds": "sentence_embeds"}))),
)


@dataclass
class _Model:
    """What one repository model needs to be written: its I/O, batching and kind."""

    name: str
    kind: str  # "network" | "preprocess_image" | "tokenize" | "ensemble"
    doc: str
    inputs: list[TensorSpec]  # shapes include the batch axis
    outputs: list[TensorSpec]
    max_batch_size: int
    preferred: list[int] = field(default_factory=list)
    spec: ModelSpec | None = None
    tokenizer: str | None = None
    ensemble: EnsembleDef | None = None


@dataclass
class RenderedRepository:
    """Result of :func:`render_repository`.

    Attributes:
        path: The repository directory.
        flavour: The flavour rendered.
        models: Model name -> kind (``network``, ``preprocess_image``, ``tokenize``, ``ensemble``).
        options: The options used.
    """

    path: Path
    flavour: str
    models: dict[str, str]
    options: RenderOptions

    @property
    def ensembles(self) -> list[str]:
        return [n for n, k in self.models.items() if k == "ensemble"]


# -- the plan: which models, with which tensors ------------------------------------------------------
def _seq_len(m: Manifest, spec: ModelSpec) -> int:
    kind = spec.meta.get("tokenizer")
    info = m.tokenizers.get(kind or "", {})
    return int(info.get("max_length", 32))


def plan_models(m: Manifest) -> dict[str, _Model]:
    """Decide which models the repository holds, from what the manifest provides.

    Networks present in the manifest are served; ``preprocess_image`` when a network takes
    ``pixel_values`` and the manifest has preprocessing; a tokenizer model per tokenizer a served
    text network uses; and every ensemble whose composing models are all present.

    Raises:
        ArtifactError: the manifest holds no network at all.
    """
    nets = [n for n in specs.NETWORKS if n in m.models]
    if not nets:
        raise ArtifactError(f"{m.root}: the manifest lists no networks; run `clipq export` first")
    out: dict[str, _Model] = {}
    for n in nets:
        s = m.models[n]
        out[n] = _Model(n, "network", f"exported network {n}", list(s.inputs), list(s.outputs),
                        s.max_batch_size, [b for b in s.preferred_batch_sizes if b <= s.max_batch_size], spec=s)

    image_users = [out[n] for n in nets if any(t.name == "pixel_values" for t in out[n].inputs)]
    if image_users and m.preprocessing.get("size"):
        size = int(m.preprocessing["size"])
        mbs = max(u.max_batch_size for u in image_users)
        out[PREPROCESS_IMAGE] = _Model(
            PREPROCESS_IMAGE, "preprocess_image", "encoded image bytes -> pixel_values (decode, resize, crop, normalise)",
            [TensorSpec("image", "bytes", (-1, 1))], [TensorSpec("pixel_values", "float32", (-1, 3, size, size))],
            mbs, image_users[0].preferred)

    for kind, name in TOKENIZE.items():
        users = [out[n] for n in nets if out[n].spec and out[n].spec.meta.get("tokenizer") == kind]
        if not users or kind not in m.tokenizers:
            continue
        out[name] = _Model(
            name, "tokenize", f"UTF-8 text -> ids and mask ({kind} tokenizer, padded to length buckets)",
            [TensorSpec("text", "bytes", (-1, 1))],
            [TensorSpec("input_ids", "int64", (-1, -1)), TensorSpec("attention_mask", "int64", (-1, -1))],
            max(u.max_batch_size for u in users), users[0].preferred, tokenizer=kind)

    for e in ENSEMBLES:
        if not all(s.model in out for s in e.steps):
            continue
        ins = [_ensemble_tensor(out, e, t, "inputs") for t in e.inputs]
        outs = [_ensemble_tensor(out, e, t, "outputs") for t in e.outputs]
        mbs = min(out[s.model].max_batch_size for s in e.steps)
        out[e.name] = _Model(e.name, "ensemble", e.doc, ins, outs, mbs, ensemble=e)
    return out


def _ensemble_tensor(models: Mapping[str, _Model], e: EnsembleDef, tensor: str, side: str) -> TensorSpec:
    """An ensemble input/output takes its dtype and shape from the step tensor it is mapped to."""
    for step in e.steps:
        mapping = step.inputs if side == "inputs" else step.outputs
        for model_tensor, ens_tensor in mapping.items():
            if ens_tensor == tensor:
                pool = models[step.model].inputs if side == "inputs" else models[step.model].outputs
                t = next((t for t in pool if t.name == model_tensor), None)
                if t is None:
                    raise ArtifactError(f"ensemble {e.name}: {step.model} has no {side[:-1]} {model_tensor!r}")
                return TensorSpec(tensor, t.dtype, t.shape)
    raise ArtifactError(f"ensemble {e.name}: no step maps {side[:-1]} {tensor!r}")


# -- config.pbtxt --------------------------------------------------------------------------------------
def _tensor(t: TensorSpec) -> dict[str, Any]:
    if t.dtype not in TRITON_DTYPES:
        raise ArtifactError(f"tensor {t.name!r}: dtype {t.dtype!r} has no Triton type")
    return {"name": t.name, "data_type": Enum(TRITON_DTYPES[t.dtype]), "dims": list(t.shape[1:])}


def _params(d: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": {"string_value": str(v)}} for k, v in d.items()]


def _batching(model: _Model, opt: RenderOptions, *, delay_us: int) -> dict[str, Any]:
    d: dict[str, Any] = {"preferred_batch_size": model.preferred, "max_queue_delay_microseconds": delay_us}
    if opt.max_queue_size > 0:
        d["default_queue_policy"] = {"max_queue_size": opt.max_queue_size}
    return d


def _warmup(model: _Model, m: Manifest, files: Mapping[str, str]) -> list[dict[str, Any]]:
    inputs = []
    for t in model.inputs:
        value: dict[str, Any] = {"data_type": Enum(TRITON_DTYPES[t.dtype])}
        dims = list(t.shape[1:])
        if model.spec is not None:
            dims = [_seq_len(m, model.spec) if d == -1 else d for d in dims]
        value["dims"] = dims
        if t.name in files:
            value["input_data_file"] = files[t.name]
        else:
            value["zero_data"] = True
        inputs.append({"key": t.name, "value": value})
    return [{"name": f"{model.name}_batch1", "batch_size": 1, "inputs": inputs}]


def _trt_profiles(model: _Model, m: Manifest) -> dict[str, str]:
    """TensorRT optimisation profile (min/opt/max shapes) for the accelerator.

    The same profile the in-process runtime builds its TensorRT engines for
    (``clipq.runtime.backends.ort.batch_profile``): batch 1 .. max_batch_size, sequence 1 .. max_length.
    """
    from clipq.runtime.backends.ort import batch_profile, trt_shape_string

    assert model.spec is not None
    profile = batch_profile(m, model.spec)
    return {f"trt_profile_{k}_shapes": trt_shape_string(profile[k]) for k in ("min", "opt", "max")}


def model_config(model: _Model, m: Manifest, opt: RenderOptions, *, sha256: str = "", variant: str = "",
                 warmup_files: Mapping[str, str] | None = None) -> str:
    """The ``config.pbtxt`` text of one model.

    Args:
        model: The planned model (see :func:`plan_models`).
        m: The source manifest.
        opt: Render options.
        sha256: For networks, the sha256 of the graph file served (recorded as a parameter so a
            client can check that the server runs the graph its manifest describes).
        variant: For networks, the variant served.
        warmup_files: Input name -> file in the model's ``warmup/`` directory.

    Returns:
        The text of ``config.pbtxt``.
    """
    cfg: dict[str, Any] = {"name": model.name}
    python = model.kind in ("preprocess_image", "tokenize") or (model.kind == "network" and opt.flavour == "cpu-python")
    params: dict[str, Any] = {}
    if model.kind == "ensemble":
        cfg["platform"] = "ensemble"
    elif python:
        cfg["backend"] = "python"
    elif opt.gpu_backend == "tensorrt":
        cfg["platform"] = "tensorrt_plan"
        cfg["default_model_filename"] = "model.plan"
    else:
        cfg["platform"] = "onnxruntime_onnx"
        cfg["default_model_filename"] = "model.onnx"
    cfg["max_batch_size"] = model.max_batch_size
    cfg["input"] = [_tensor(t) for t in model.inputs]
    cfg["output"] = [_tensor(t) for t in model.outputs]

    if model.kind == "ensemble":
        assert model.ensemble is not None
        cfg["ensemble_scheduling"] = {"step": [
            {"model_name": s.model, "model_version": -1,
             "input_map": [{"key": k, "value": v} for k, v in s.inputs.items()],
             "output_map": [{"key": k, "value": v} for k, v in s.outputs.items()]}
            for s in model.ensemble.steps]}
        return dumps(cfg, _header(model))

    if model.kind == "network":
        if opt.dynamic_batching:
            cfg["dynamic_batching"] = _batching(model, opt, delay_us=opt.max_queue_delay_us)
        gpu = opt.flavour == "gpu"
        cfg["instance_group"] = [{"count": opt.instances, "kind": Enum("KIND_GPU" if gpu else "KIND_CPU")}]
        params["clipq_sha256"] = sha256
        params["clipq_variant"] = variant
        if gpu and opt.gpu_backend == "onnxruntime":
            trt = {"precision_mode": opt.gpu_precision, "max_workspace_size_bytes": str(1 << 30),
                   "trt_engine_cache_enable": "1", "trt_engine_cache_path": opt.trt_cache_dir,
                   **_trt_profiles(model, m)}
            cfg["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [
                {"name": "tensorrt", "parameters": [{"key": k, "value": v} for k, v in trt.items()]}]}}
            if opt.intra_op_threads:
                params["intra_op_thread_count"] = opt.intra_op_threads
        elif not gpu:
            params.update(clipq_role="onnx", clipq_intra_op_threads=opt.intra_op_threads,
                          clipq_allow_spinning=int(opt.allow_spinning))
    else:
        # helpers answer each request on its own; a zero delay only groups what already waits,
        # which saves round trips to the stub process without holding anything back
        cfg["dynamic_batching"] = _batching(model, opt, delay_us=0)
        cfg["instance_group"] = [{"count": opt.helper_instances, "kind": Enum("KIND_CPU")}]
        params["clipq_role"] = model.kind
        if model.kind == "tokenize":
            params.update(clipq_tokenizer=model.tokenizer, clipq_pad_multiple=opt.pad_multiple)
        if model.kind == "preprocess_image" and opt.max_pixels is not None:
            params["clipq_max_pixels"] = opt.max_pixels
    cfg["version_policy"] = {"latest": {"num_versions": 1}}
    if opt.warmup:
        cfg["model_warmup"] = _warmup(model, m, warmup_files or {})
    if params:
        cfg["parameters"] = _params(params)
    return dumps(cfg, _header(model))


def _header(model: _Model) -> list[str]:
    return [f"{model.name}: {model.doc}.",
            "Rendered by clipq.serving from the artifact manifest; do not edit by hand:",
            "re-render with `clipq export --triton DIR` (or clipq.serving.render_repository)."]


# -- files -------------------------------------------------------------------------------------------
def _link_or_copy(src: Path, dst: Path) -> None:
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


def _mini_manifest(src: Manifest, vdir: Path, files: Mapping[str, str], **sections: Any) -> None:
    """Write ``vdir/manifest.json``: a valid clipq manifest of what this model directory holds.

    Args:
        src: The source manifest (its hashes are reused: the files were verified when linked).
        vdir: The model's version directory.
        files: Path in ``vdir`` -> path in the source manifest, for every file copied in.
        sections: Manifest sections (``models``, ``preprocessing``, ``tokenizers``, ...).

    Written with the source manifest's creation time and versions (not "now"), so rendering the
    same artifacts twice gives byte-identical files.
    """
    mini = Manifest(root=vdir, created=src.created, package_versions=dict(src.package_versions), **sections)
    mini.files = {dst: dict(src.files[s]) for dst, s in sorted(files.items())}
    atomic_write_json(vdir / "manifest.json", mini.to_dict())


def _write_model(model: _Model, m: Manifest, mdir: Path, opt: RenderOptions) -> None:
    vdir = mdir / "1"
    vdir.mkdir(parents=True, exist_ok=True)
    sha, variant, warm = "", "", {}
    python = model.kind in ("preprocess_image", "tokenize") or (model.kind == "network" and opt.flavour == "cpu-python")

    if model.kind == "network":
        assert model.spec is not None
        if opt.flavour == "gpu" and opt.gpu_backend == "tensorrt":
            variant = "plan"
            rel, fname = model.spec.file_for("plan"), "model.plan"
        else:
            variant = opt.variant or (model.spec.default_variant if opt.flavour == "cpu-python" else "fp32")
            rel, fname = model.spec.file_for(variant), "model.onnx"
        src = m.resolve(rel)  # verifies the sha256 before the file goes anywhere
        sha = m.files[Path(rel).as_posix()]["sha256"]
        _link_or_copy(src, vdir / fname)
        spec = replace(model.spec, file=fname, variants={}, default_variant="fp32",
                       meta={**model.spec.meta, "variant": variant, "source_file": rel})
        _mini_manifest(m, vdir, {fname: Path(rel).as_posix()}, models={model.name: spec}, dims=dict(m.dims))
    elif model.kind == "preprocess_image":
        (mdir / "warmup").mkdir(exist_ok=True)
        warm = _WARMUP_FILES["preprocess_image"]
        (mdir / "warmup" / warm["image"]).write_bytes(_serialized_bytes([_warmup_png(int(m.preprocessing["size"]))]))
        _mini_manifest(m, vdir, {}, preprocessing=dict(m.preprocessing))
    elif model.kind == "tokenize":
        assert model.tokenizer is not None
        info = dict(m.tokenizers[model.tokenizer])
        rel_dir = str(info["path"]).rstrip("/")
        if rel_dir.endswith(".json"):
            rel_dir = str(Path(rel_dir).parent)
        listed = [k for k in m.files if k.startswith(rel_dir + "/")]
        if not listed:
            raise ArtifactError(f"{m.root}: tokenizer {model.tokenizer!r}: no files under {rel_dir}/ in the manifest")
        copied = {}
        for k in listed:  # tokenizer.json and the configs that name its special tokens
            dst = (Path("tokenizer") / Path(k).relative_to(rel_dir)).as_posix()
            _link_or_copy(m.resolve(k), vdir / dst)
            copied[dst] = k
        (mdir / "warmup").mkdir(exist_ok=True)
        warm = _WARMUP_FILES["tokenize"]
        (mdir / "warmup" / warm["text"]).write_bytes(_serialized_bytes([_WARMUP_TEXT.encode()]))
        _mini_manifest(m, vdir, copied, tokenizers={model.tokenizer: {**info, "path": "tokenizer"}})
    if python:
        shutil.copyfile(MODEL_PY, vdir / "model.py")
    elif model.kind == "ensemble":
        (vdir / ".gitkeep").touch()  # Triton needs the version directory; git keeps no empty ones
    (mdir / "config.pbtxt").write_text(model_config(model, m, opt, sha256=sha, variant=variant, warmup_files=warm))


def render_repository(
    manifest: Manifest | str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: RenderOptions | None = None,
    *,
    models: Iterable[str] | None = None,
) -> RenderedRepository:
    """Render the Triton model repository for ``manifest`` into ``out``.

    The repository is written into a temporary sibling directory and swapped into place, so a
    server never sees half of it. An existing ``out`` is replaced only if it is empty or was
    rendered by clipq (it holds ``clipq_repository.json``).

    Args:
        manifest: A :class:`Manifest` or an artifact directory.
        out: Repository directory to write.
        options: Render options (default: ``cpu-python`` flavour).
        models: Only these models (ensembles pull in nothing by themselves: list their parts too).

    Returns:
        A :class:`RenderedRepository`.

    Raises:
        ArtifactError: the manifest is unusable (no networks, a file missing or changed, a variant
            that does not exist) or ``out`` is a directory clipq did not render.
    """
    m = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
    opt = options or RenderOptions()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / REPOSITORY_FILE).is_file():
        raise ArtifactError(f"{out} is not empty and was not rendered by clipq (no {REPOSITORY_FILE}); "
                            "choose another directory")
    plan = plan_models(m)
    if models is not None:
        wanted = set(models)
        unknown = wanted - set(plan)
        if unknown:
            raise ArtifactError(f"cannot render {sorted(unknown)}: not available from {m.root} (has: {sorted(plan)})")
        plan = {k: v for k, v in plan.items() if k in wanted}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for model in plan.values():
            _write_model(model, m, tmp / model.name, opt)
        info = {
            "schema_version": REPOSITORY_SCHEMA,
            "flavour": opt.flavour,
            "options": opt.to_dict(),
            "models": {k: v.kind for k, v in plan.items()},
            # enough of the source manifest to re-render the configs (tests check for drift)
            "source": {"created": m.created, "preprocessing": m.preprocessing, "tokenizers": m.tokenizers,
                       "dims": m.dims, "n_answers": len(m.answer_vocab),
                       "specs": {k: v.spec.to_dict() for k, v in plan.items() if v.spec is not None}},
        }
        atomic_write_json(tmp / REPOSITORY_FILE, info)
        (tmp / "README.md").write_text(_readme(plan, opt))
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return RenderedRepository(out, opt.flavour, {k: v.kind for k, v in plan.items()}, opt)


def _readme(plan: Mapping[str, _Model], opt: RenderOptions) -> str:
    """A short description of the repository (Triton ignores files at the repository root)."""
    def io(ts: list[TensorSpec]) -> str:
        return ", ".join(f"{t.name} {t.dtype}{list(t.shape[1:])}" for t in ts)

    lines = [
        "# Triton model repository (rendered by clipq)",
        "",
        f"Flavour `{opt.flavour}`. Rendered from an artifact manifest by `clipq.serving.render_repository`",
        "(`clipq export --triton DIR`, `clipq serve ARTIFACTS`, `python -m clipq.serving render`); do not edit",
        "by hand: the tests re-render every config.pbtxt from `clipq_repository.json` and compare.",
        "Model binaries (`*/1/model.onnx`, `model.plan`) are hard links to the artifacts and not checked in.",
        "",
        "| model | kind | inputs | outputs | max batch |",
        "|---|---|---|---|---|",
    ]
    for m in plan.values():
        lines.append(f"| `{m.name}` | {m.kind} | {io(m.inputs)} | {io(m.outputs)} | {m.max_batch_size} |")
    lines += ["", "Serve it with `clipq serve <this directory>`; see docs/serving.md.", ""]
    return "\n".join(lines)


def _swap_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        tmp.rename(out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_repository_info(repo: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``clipq_repository.json`` of a rendered repository, or ``None`` for a foreign one."""
    p = Path(repo) / REPOSITORY_FILE
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"cannot read {p}: {e}") from e


def expected_configs(repo: str | os.PathLike[str]) -> dict[str, str]:
    """Re-render every ``config.pbtxt`` of a clipq-rendered repository from its own record.

    ``clipq_repository.json`` keeps the options and the part of the source manifest the configs
    depend on, and each network's ``1/manifest.json`` the hash and variant of its graph, so the
    configs can be regenerated without the artifacts. Comparing the result with the files on disk
    shows whether anyone edited a config by hand (the checked-in repository is tested this way).

    Returns:
        Model name -> the config text the renderer would write.

    Raises:
        ArtifactError: ``repo`` was not rendered by clipq.
    """
    repo = Path(repo)
    info = read_repository_info(repo)
    if info is None:
        raise ArtifactError(f"{repo} was not rendered by clipq (no {REPOSITORY_FILE})")
    src = info["source"]
    m = Manifest(root=repo, preprocessing=src["preprocessing"], tokenizers=src["tokenizers"], dims=src["dims"],
                 answer_vocab=[""] * int(src.get("n_answers", 0)),
                 models={k: ModelSpec.from_dict(v) for k, v in src["specs"].items()})
    opt = RenderOptions.from_dict(info["options"])
    plan = plan_models(m)
    out = {}
    for name, kind in info["models"].items():
        sha = variant = ""
        if kind == "network":
            mini = json.loads((repo / name / "1" / "manifest.json").read_text())
            spec = mini["models"][name]
            sha = mini["files"][spec["file"]]["sha256"]
            variant = spec["meta"].get("variant", "")
        out[name] = model_config(plan[name], m, opt, sha256=sha, variant=variant,
                                 warmup_files=_WARMUP_FILES.get(kind, {}))
    return out


def is_repository(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like a Triton model repository (a sub-directory with config.pbtxt)."""
    p = Path(path)
    return p.is_dir() and any((c / "config.pbtxt").is_file() for c in p.iterdir() if c.is_dir())
