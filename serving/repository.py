"""Render a Triton model repository from an artifact manifest (the one source of truth).

Every ``config.pbtxt`` is generated from the manifest's model specs: tensor names, dtypes and
shapes, ``max_batch_size`` and preferred batch sizes come from :mod:`clipq.runtime.specs` through
the manifest, preprocessing and tokenizer settings from the manifest's sections. Nothing is
copied by hand, so an exported model and its server configuration cannot drift apart.

Layout (see :mod:`.layout`; ``cpu-python`` flavour)::

    clipq_repository.json                 how it was rendered (options, source manifest subset)
    README.md
    backends/clipq/model.py               serving/backend/model.py: the one Python-based backend
    tokenizers/manifest.json              one copy of each tokenizer, with its sha256
    tokenizers/clip/tokenizer.json
    models/clip_image/config.pbtxt        backend "clipq", dynamic batching, warm-up, version policy
    models/clip_image/1/manifest.json     the model's own small manifest: spec + sha256 of model.onnx
    models/clip_image/1/model.onnx        hard link to (or copy of) the artifact's graph
    models/clip_image/1/model.xml|.bin    the recorded CPU default's OpenVINO IR, where one is recorded
    models/preprocess_image/...           bytes -> pixel_values (manifest.preprocessing)
    models/tokenize_clip/config.pbtxt     text -> ids/mask; clipq_manifest names ../../tokenizers
    models/knn_prompts/1/knn/...          Model B's database (hard links) + the ensemble head graph
    models/clipq_info/1/info.json         what a thin client must know (the manifest's public facts)
    models/embed_image/config.pbtxt       fused: preprocess_image + clip_image in one clipq model (its graphs in 1/)
    models/ask/config.pbtxt               ensembles: platform "ensemble", no files
    models/ask/1/                         (empty version directory, required by Triton)

No path points back into the artifact directory, so the repository can be copied to object
storage or mounted into the NGC container as it is. How each flavour writes each kind of model is
in :mod:`.renderers` (``gpu``: the networks on Triton's ``onnxruntime_onnx`` or ``tensorrt_plan``;
the image and text helpers stay on the ``clipq`` backend on the CPU).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipq.runtime.errors import ArtifactError
from clipq.runtime.manifest import Manifest, ModelSpec, TensorSpec, atomic_write_json

from .layout import (
    BACKEND_NAME,
    BACKEND_SOURCE,
    BACKENDS_DIR,
    MODELS_DIR,
    REPOSITORY_FILE,
    TOKENIZERS_DIR,
    is_repository,
    repository_layout,
)
from .plan import (
    ENSEMBLES,
    KNN_MODEL,
    PREPROCESS_IMAGE,
    TOKENIZE,
    EnsembleDef,
    PlannedModel,
    Step,
    plan_models,
)
from .renderers import FLAVOURS, RenderOptions, Served, renderer, write_tokenizers

__all__ = ["ENSEMBLES", "FLAVOURS", "PREPROCESS_IMAGE", "REPOSITORY_FILE", "TOKENIZE", "EnsembleDef",
           "PlannedModel", "RenderOptions", "RenderedRepository", "Step", "expected_configs", "is_repository",
           "plan_models", "read_repository_info", "render_repository"]

REPOSITORY_SCHEMA = 3


@dataclass
class RenderedRepository:
    """Result of :func:`render_repository`.

    Attributes:
        path: The rendered directory (give it to ``TritonServer`` or ``clipq serve``).
        flavour: The flavour rendered.
        models: Model name -> kind (``network``, ``preprocess_image``, ``tokenize``, ``ensemble``).
        options: The options used.
    """

    path: Path
    flavour: str
    models: dict[str, str]
    options: RenderOptions

    @property
    def model_repository(self) -> Path:
        """The Triton model repository inside it (``--model-repository``)."""
        return self.path / MODELS_DIR

    @property
    def backend_dir(self) -> Path:
        """The folder of the ``clipq`` Python-based backend (``backends/clipq``)."""
        return self.path / BACKENDS_DIR / BACKEND_NAME

    @property
    def ensembles(self) -> list[str]:
        return [n for n, k in self.models.items() if k == "ensemble"]


def model_config(model: PlannedModel, m: Manifest, opt: RenderOptions, served: Served | None = None) -> str:
    """The ``config.pbtxt`` text of one model (``served``: for networks, the graph it serves)."""
    return renderer(m, opt, {model.name: model}).config(model, served)


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
        out: Directory to write (see the module docstring for its layout).
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
    plan = plan_models(m, fused=opt.fused)
    if models is not None:
        wanted = set(models)
        unknown = wanted - set(plan)
        if unknown:
            raise ArtifactError(f"cannot render {sorted(unknown)}: not available from {m.root} (has: {sorted(plan)})")
        plan = {k: v for k, v in plan.items() if k in wanted}
    r = renderer(m, opt, plan)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for model in plan.values():
            r.write(model, tmp / MODELS_DIR / model.name)
        if any(r.uses_backend(model) for model in plan.values()):
            (tmp / BACKENDS_DIR / BACKEND_NAME).mkdir(parents=True)
            shutil.copyfile(BACKEND_SOURCE, tmp / BACKENDS_DIR / BACKEND_NAME / "model.py")
        write_tokenizers(m, list(dict.fromkeys(v.tokenizer for v in plan.values()
                                               if v.kind in ("tokenize", "fused") and v.tokenizer)),
                         tmp / TOKENIZERS_DIR)
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


def _readme(plan: Mapping[str, PlannedModel], opt: RenderOptions) -> str:
    """A short description of the repository (Triton never sees it: it serves ``models/``)."""
    def io(ts: list[TensorSpec]) -> str:
        return ", ".join(f"{t.name} {t.dtype}{list(t.shape[1:])}" for t in ts)

    lines = [
        "# Triton model repository (rendered by clipq)",
        "",
        f"Flavour `{opt.flavour}`. Rendered from an artifact manifest by `clipq.serving.render_repository`",
        "(`clipq export --triton DIR`, `clipq serve ARTIFACTS`, `python -m clipq.serving render`); do not edit",
        "by hand: the tests re-render every config.pbtxt from `clipq_repository.json` and compare.",
        "",
        f"- `{MODELS_DIR}/`: the Triton model repository (`--model-repository`). Model binaries",
        "  (`*/1/model.onnx`, `model.plan`) are hard links to the artifacts and not checked in.",
        f"- `{BACKENDS_DIR}/{BACKEND_NAME}/model.py`: the one Python-based backend of every model whose config says",
        f"  `backend: \"{BACKEND_NAME}\"` (none has a model.py of its own); it belongs in the server's backend",
        f"  directory (`clipq serve` puts it there; the NGC image has it in /opt/tritonserver/backends/{BACKEND_NAME}).",
        f"- `{TOKENIZERS_DIR}/`: one copy of each tokenizer; the tokenize models name it in `clipq_manifest`.",
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
        ArtifactError: ``repo`` was not rendered by clipq, or by an older layout.
    """
    repo = Path(repo)
    info = read_repository_info(repo)
    if info is None:
        raise ArtifactError(f"{repo} was not rendered by clipq (no {REPOSITORY_FILE})")
    if info.get("schema_version") != REPOSITORY_SCHEMA:
        raise ArtifactError(f"{repo} was rendered with layout {info.get('schema_version')!r}; this clipq "
                            f"writes {REPOSITORY_SCHEMA}: render it again")
    src = info["source"]
    m = Manifest(root=repo, preprocessing=src["preprocessing"], tokenizers=src["tokenizers"], dims=src["dims"],
                 answer_vocab=[""] * int(src.get("n_answers", 0)),
                 models={k: ModelSpec.from_dict(v) for k, v in src["specs"].items()})
    opt = RenderOptions.from_dict(info["options"])
    plan = plan_models(m, knn=KNN_MODEL in info["models"], fused=opt.fused)
    r = renderer(m, opt, plan)
    models = repository_layout(repo).models
    out = {}
    for name, kind in info["models"].items():
        served = None
        if kind in ("network", "fused"):
            mini = json.loads((models / name / "1" / "manifest.json").read_text())
            net = plan[name].spec.name if plan[name].spec is not None else name
            spec = mini["models"][net]
            served = Served(spec["meta"].get("variant", ""),
                            mini["files"][spec["meta"].get("served_file", spec["file"])]["sha256"])
        out[name] = r.config(plan[name], served)
    return out
