"""The artifact directory's manifest: the one contract between train, export, serving and runtime.

Torch-free on purpose: export and serving read it, and so does a deployment that installs only the
runtime. Every file the manifest lists carries its sha256 and size; loading refuses a schema version
it does not know, and resolving a file refuses one that is missing or whose hash does not match.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ArtifactError, SchemaVersionError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
#: who reads which files: training and export read the PyTorch checkpoints; the runtime and the
#: server read everything else (graphs, tokenizers, KNN database): the deploy bundle
CONSUMERS = ("deploy", "train")
TRAINING_PREFIXES = ("checkpoints/",)


def consumer_of(rel: str) -> str:
    """``"train"`` for a file only training/export read (PyTorch checkpoints), else ``"deploy"``."""
    return "train" if rel.startswith(TRAINING_PREFIXES) else "deploy"

#: numpy dtype name -> Triton / ONNX-ish type name used in config.pbtxt
TRITON_DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL",
    "bytes": "TYPE_STRING",
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor. ``shape`` includes the batch axis first; -1 means dynamic."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(name=d["name"], dtype=d["dtype"], shape=tuple(int(s) for s in d["shape"]))


@dataclass
class ModelSpec:
    """One exported network: its graph files and the tensors it takes and gives.

    Declared once (``clipq.runtime.specs``), written into the manifest by export, and read by the
    runtime and by the Triton config renderer.
    """

    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    file: str = ""  # fp32 ONNX graph, relative to the artifact root
    variants: dict[str, str] = field(default_factory=dict)  # "int8" -> "onnx/x.int8.onnx", ...
    default_variant: str = "fp32"  # what the in-process CPU runtime runs by default
    max_batch_size: int = 32
    preferred_batch_sizes: list[int] = field(default_factory=lambda: [8, 16, 32])
    parity: dict[str, Any] = field(default_factory=dict)  # variant -> figures
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["inputs"] = [t.to_dict() for t in self.inputs]
        d["outputs"] = [t.to_dict() for t in self.outputs]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        d = dict(d)
        d["inputs"] = [TensorSpec.from_dict(t) for t in d["inputs"]]
        d["outputs"] = [TensorSpec.from_dict(t) for t in d["outputs"]]
        return cls(**d)

    def file_for(self, variant: str | None = None) -> str:
        variant = variant or self.default_variant
        if variant == "fp32":
            return self.file
        if variant not in self.variants:
            raise ArtifactError(
                f"model {self.name!r} has no {variant!r} variant (has: fp32, {', '.join(self.variants) or '-'})"
            )
        return self.variants[variant]

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise KeyError(name)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


@dataclass
class Manifest:
    """In-memory view of ``manifest.json``; ``root`` is the artifact directory."""

    root: Path
    schema_version: int = SCHEMA_VERSION
    created: str = ""
    package_versions: dict[str, str] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    tokenizers: dict[str, dict[str, Any]] = field(default_factory=dict)
    dims: dict[str, int] = field(default_factory=dict)
    answer_vocab: list[str] = field(default_factory=list)
    models: dict[str, ModelSpec] = field(default_factory=dict)
    checkpoints: dict[str, str] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    _verified: set[str] = field(default_factory=set, repr=False, compare=False)

    # -- persistence -------------------------------------------------------------------------
    @classmethod
    def load(cls, root: str | os.PathLike[str], *, need: str = "deploy") -> Manifest:
        """Read ``root/manifest.json``; check schema version, presence and size of the files needed.

        Args:
            root: the artifact directory.
            need: ``"deploy"`` (default): the files the runtime and the server read must be present;
                PyTorch checkpoints may be absent (a deploy bundle) and are checked when training or
                export resolves them. ``"all"``: every listed file.

        Raises:
            ArtifactError: the directory or manifest is missing or unreadable, or a needed file is
                missing or has the wrong size.
            SchemaVersionError: the manifest was written by another schema version.
        """
        root = Path(root)
        path = root / MANIFEST_NAME
        if not root.is_dir():
            raise ArtifactError(f"artifact directory not found: {root}")
        if not path.is_file():
            raise ArtifactError(f"no {MANIFEST_NAME} in {root}: run `clipq train` / `clipq export` first")
        try:
            d = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ArtifactError(f"cannot read {path}: {e}") from e
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{path} has schema version {version!r}; this clipq reads version {SCHEMA_VERSION}"
            )
        m = cls(
            root=root,
            schema_version=version,
            created=d.get("created", ""),
            package_versions=d.get("package_versions", {}),
            preprocessing=d.get("preprocessing", {}),
            tokenizers=d.get("tokenizers", {}),
            dims=d.get("dims", {}),
            answer_vocab=d.get("answer_vocab", []),
            models={k: ModelSpec.from_dict(v) for k, v in d.get("models", {}).items()},
            checkpoints=d.get("checkpoints", {}),
            files=d.get("files", {}),
            metrics=d.get("metrics", {}),
            extra=d.get("extra", {}),
        )
        if need not in ("deploy", "all"):
            raise ValueError(f"need must be 'deploy' or 'all', got {need!r}")
        for rel, info in m.files.items():
            if need == "deploy" and consumer_of(rel) != "deploy":
                continue
            p = root / rel
            if not p.is_file():
                raise ArtifactError(f"{root}: file listed in the manifest is missing: {rel}")
            if p.stat().st_size != info.get("size"):
                raise ArtifactError(
                    f"{root}: {rel} has {p.stat().st_size} bytes, the manifest says {info.get('size')}"
                    " (truncated or replaced?)"
                )
        return m

    @classmethod
    def load_or_new(cls, root: str | os.PathLike[str]) -> Manifest:
        root = Path(root)
        if (root / MANIFEST_NAME).is_file():
            return cls.load(root)
        root.mkdir(parents=True, exist_ok=True)
        return cls(root=root)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "created": self.created,
            "package_versions": self.package_versions,
            "preprocessing": self.preprocessing,
            "tokenizers": self.tokenizers,
            "dims": self.dims,
            "answer_vocab": self.answer_vocab,
            "models": {k: v.to_dict() for k, v in self.models.items()},
            "checkpoints": self.checkpoints,
            "files": self.files,
            "metrics": self.metrics,
            "extra": self.extra,
        }

    def save(self) -> Path:
        """Write the manifest atomically (temp file, fsync, rename)."""
        self.created = self.created or time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.package_versions = {**self.package_versions, **package_versions()}
        path = self.root / MANIFEST_NAME
        atomic_write_json(path, self.to_dict())
        return path

    # -- files -------------------------------------------------------------------------------
    def add_file(self, rel: str | os.PathLike[str]) -> str:
        """Record ``rel`` (relative to root) with its hash and size. Returns the posix rel path."""
        rel = Path(rel).as_posix()
        p = self.root / rel
        if not p.is_file():
            raise ArtifactError(f"cannot add missing file to the manifest: {p}")
        self.files[rel] = {"sha256": sha256_file(p), "size": p.stat().st_size}
        self._verified.add(rel)
        return rel

    def record_file(self, rel: str | os.PathLike[str], source: str | os.PathLike[str]) -> str:
        """List ``rel`` with the hash and size of ``source``, a file that will be moved to ``rel``.

        For writers that stage a file elsewhere and move it into place at commit (the export): the
        entry describes the new content, and the next :meth:`resolve` re-checks the hash.
        """
        rel = Path(rel).as_posix()
        src = Path(source)
        if not src.is_file():
            raise ArtifactError(f"cannot record missing file {src} as {rel}")
        self.files[rel] = {"sha256": sha256_file(src), "size": src.stat().st_size}
        self._verified.discard(rel)
        return rel

    def add_tree(self, rel_dir: str | os.PathLike[str]) -> list[str]:
        """Record every file under ``rel_dir`` (forgetting files it listed there before)."""
        rel_dir = Path(rel_dir).as_posix().rstrip("/")
        for k in [k for k in self.files if k.startswith(rel_dir + "/")]:
            del self.files[k]
        base = self.root / rel_dir
        return [self.add_file(p.relative_to(self.root)) for p in sorted(base.rglob("*")) if p.is_file()]

    def resolve(self, rel: str | os.PathLike[str], *, verify: bool = True) -> Path:
        """Absolute path of a listed file, its sha256 checked once per process.

        Raises:
            ArtifactError: the file is not listed, missing, or its hash does not match.
        """
        rel = Path(rel).as_posix()
        p = self.root / rel
        info = self.files.get(rel)
        if info is None:
            raise ArtifactError(f"{self.root}: {rel} is not listed in the manifest")
        if not p.is_file():
            raise ArtifactError(f"{self.root}: file listed in the manifest is missing: {rel}")
        if verify and rel not in self._verified:
            digest = sha256_file(p)
            if digest != info["sha256"]:
                raise ArtifactError(
                    f"{self.root}: sha256 of {rel} is {digest[:12]}..., the manifest says "
                    f"{info['sha256'][:12]}... (file changed or corrupt)"
                )
            self._verified.add(rel)
        return p

    def resolve_dir(self, rel_dir: str | os.PathLike[str], *, verify: bool = True) -> Path:
        """Absolute path of a listed directory, every listed file in it verified."""
        rel_dir = Path(rel_dir).as_posix().rstrip("/")
        listed = [k for k in self.files if k.startswith(rel_dir + "/")]
        if not listed:
            raise ArtifactError(f"{self.root}: no files under {rel_dir}/ are listed in the manifest")
        for k in listed:
            self.resolve(k, verify=verify)
        return self.root / rel_dir

    def verify_all(self, consumer: str | None = None) -> None:
        """Hash-check every listed file (or only those of ``consumer``: "deploy" or "train")."""
        for rel in self.files:
            if consumer is None or consumer_of(rel) == consumer:
                self.resolve(rel)

    def files_for(self, consumer: str) -> dict[str, dict[str, Any]]:
        """The listed files that ``consumer`` ("deploy" or "train") reads."""
        if consumer not in CONSUMERS:
            raise ValueError(f"consumer must be one of {CONSUMERS}, got {consumer!r}")
        return {rel: info for rel, info in self.files.items() if consumer_of(rel) == consumer}

    def bundle(self, out: str | os.PathLike[str]) -> Manifest:
        """Write the deploy bundle to ``out``: every deploy file (hash-checked), and a manifest
        without the PyTorch checkpoints. Returns the bundle's manifest.

        Raises:
            ArtifactError: ``out`` exists and is not empty, or a deploy file fails its hash check.
        """
        import shutil

        out = Path(out)
        if out.exists() and any(out.iterdir()):
            raise ArtifactError(f"bundle directory {out} exists and is not empty")
        files = self.files_for("deploy")
        for rel in files:
            src = self.resolve(rel)
            dst = out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        b = Manifest(root=out, **{f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)
                                  if f.name != "root" and not f.name.startswith("_")})
        b.files = dict(files)
        b.checkpoints = {}
        b.extra = {**self.extra, "bundle": {"from": str(self.root), "files": len(files),
                                            "bytes": int(sum(int(i.get("size", 0)) for i in files.values()))}}
        b.save()
        return Manifest.load(out)

    def model(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            raise ArtifactError(
                f"{self.root}: no model {name!r} in the manifest (has: {', '.join(sorted(self.models)) or 'none'});"
                " run `clipq export` first"
            ) from None


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("clipq", "numpy", "onnxruntime", "tokenizers", "torch", "transformers", "onnx", "optimum"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out
