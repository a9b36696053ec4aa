"""Bring your own CLIP or SigLIP: a local checkpoint -> exported, parity-checked, deployable artifacts, no training.

``clipq import DIR --out ARTIFACTS`` runs :func:`import_checkpoint`: the checkpoint is read as
transformers reads it (:mod:`clipq.models.checkpoint`; SigLIP's differences: :mod:`clipq.models.siglip`), saved into the artifact directory, and both
towers are exported to ONNX with the usual parity checks (int8 by default, kept only where it passes
and is faster). Optional heads attach when given: trained VQA / Model A checkpoints from a clipq
artifact directory (``--heads``), and a prompt database for Model B (``--prompts`` csv + images).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipq.runtime.errors import ArtifactError

log = logging.getLogger(__name__)

#: the networks every import exports; heads add theirs
TOWERS = ("clip_image", "clip_text")


@dataclass
class ImportReport:
    artifacts: Path
    networks: list[str]
    seconds: dict[str, float] = field(default_factory=dict)
    heads: dict[str, Any] = field(default_factory=dict)
    export: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"artifacts": str(self.artifacts), "networks": self.networks, "seconds": self.seconds,
                "heads": self.heads, "parity": {n: r.parity for n, r in (self.export.networks.items() if self.export else [])}}


def _attach_heads(m: Any, heads: str | os.PathLike[str]) -> dict[str, Any]:
    """Copy VQA / Model A checkpoints (and what they need) from another clipq artifact directory."""
    from clipq.models.io import write_tokenizer
    from clipq.runtime.manifest import Manifest

    src = Manifest.load(heads, need="all")
    if src.dims.get("clip_embed") != m.dims.get("clip_embed"):
        raise ArtifactError(f"{heads}: heads trained on a {src.dims.get('clip_embed')}-d CLIP cannot serve a "
                            f"{m.dims.get('clip_embed')}-d one")
    if src.extra.get("clip_model_id") != m.extra.get("clip_model_id"):
        log.warning("%s: the heads were trained on another CLIP checkpoint than %s; their accuracy is not "
                    "known on this one", heads, m.extra.get("pretrained"))
    copied = []
    for name, rel in src.checkpoints.items():
        if not (name.startswith("vqa_") or name == "img2prompt_a"):
            continue
        d = src.resolve_dir(rel)
        shutil.copytree(d, m.root / rel, dirs_exist_ok=True)
        m.add_tree(rel)
        m.checkpoints[name] = rel
        copied.append(name)
    if any(c.startswith("vqa_") for c in copied):
        m.answer_vocab = list(src.answer_vocab)
        m.extra["vqa"] = {k: v for k, v in (src.extra.get("vqa") or {}).items() if k == "export_variant"}
        for key in ("lm", "vqa_prefix_len"):
            if key in src.extra:
                m.extra[key] = src.extra[key]
    for kind in ("lm", "prompt"):
        info = src.tokenizers.get(kind)
        if info:
            write_tokenizer(m, kind, src.resolve(f"{info['path']}/tokenizer.json"), int(info["max_length"]))
    return {"from": str(heads), "checkpoints": copied}


def _attach_prompts(m: Any, csv_path: str | os.PathLike[str], image_dir: str | os.PathLike[str],
                    k: int, threads: int | None) -> dict[str, Any]:
    """Model B's database: the prompts' MiniLM embeddings beside their images' CLIP embeddings."""
    import clipq.runtime as rt
    from clipq.readers import read_prompts, resolve_images
    from clipq.runtime.fusion import Img2PromptSettings, KnnPromptFusion

    records = read_prompts(csv_path, image_dir=image_dir)
    if not records:
        raise ArtifactError(f"{csv_path}: no prompts")
    paths = resolve_images(image_dir, [r.image_id for r in records])
    backend = rt.connect(m.root, threads=threads)
    try:
        clip = rt.ClipEncoder(backend)
        fusion = KnnPromptFusion.from_embeddings(
            clip.encode_images(paths), rt.PromptEncoder(backend).encode([r.prompt for r in records]),
            [r.prompt for r in records], ids=[r.image_id for r in records], model_id=clip.model_id, k=min(k, len(records)),
        )
    finally:
        backend.close()
    out = m.root / "knn"
    if out.exists():
        shutil.rmtree(out)
    fusion.save(out)
    m.add_tree("knn")
    # Model B alone where no Model A came with the heads: the default alpha would weigh a missing model
    settings = Img2PromptSettings.from_manifest(m).replace(k=fusion.k)
    settings.replace(alpha=settings.alpha if "img2prompt_a" in m.checkpoints else 0.0).store(m)
    return {"prompts": len(records), "k": fusion.k}


def import_checkpoint(src: str | os.PathLike[str], out: str | os.PathLike[str], *, int8: bool = True,
                      data: str | os.PathLike[str] | None = None, heads: str | os.PathLike[str] | None = None,
                      prompts: str | os.PathLike[str] | None = None, prompt_images: str | os.PathLike[str] | None = None,
                      k: int = 10, threads: int | None = None, parity_batches: tuple[int, ...] | None = None,
                      force: bool = False, openvino: bool | None = None) -> ImportReport:
    """Import a local CLIP checkpoint into a new artifact directory and export it.

    Args:
        src: a ``save_pretrained`` CLIP or SigLIP directory (``config.json``'s ``model_type``: clip,
            vision-text-dual-encoder, siglip; another is refused with ``UnsupportedModelError``).
        out: the artifact directory to create.
        int8: also try int8 graphs (kept per network only where parity holds and they are faster).
        data: a data directory for real parity/calibration inputs and the task-metric gate.
        heads: a clipq artifact directory whose VQA / Model A checkpoints to attach.
        prompts: a prompts csv (``imgId,prompt``) for Model B's database, with ``prompt_images``.
        k: Model B's neighbours.
        threads: onnxruntime threads for timing and encoding.
        parity_batches: batch sizes of the parity checks (default 1, 8 and the largest served).
        force: replace an existing artifact directory.
        openvino: also export the OpenVINO variants (IR and NNCF int8, calibrated on ``data``'s images or
            the built-in real photos) and record the CPU default measured on this machine across
            onnxruntime and OpenVINO, each engine in its own process. Default: with ``int8``, where
            OpenVINO is installed; an imported model then gets the fastest passing engine without a
            second ``clipq export --openvino``.

    Raises:
        ArtifactError: the checkpoint cannot be read, ``out`` exists (without ``force``), or a head
            does not fit. ParityError: an exported graph does not reproduce PyTorch.
    """
    from clipq.app.taskmetrics import export_options_for_data
    from clipq.export import ExportOptions, export_artifacts
    from clipq.models.checkpoint import init_from_checkpoint
    from clipq.models.io import save_clip

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise ArtifactError(f"{out} exists and is not empty (use --force to replace it)")
        shutil.rmtree(out)
    if prompts is not None and prompt_images is None:
        raise ArtifactError("--prompts needs --prompt-images (the directory the csv's imgId names)")
    t0 = time.perf_counter()
    m, clip = init_from_checkpoint(src, out)
    save_clip(m, clip)
    shutil.rmtree(out / ".import", ignore_errors=True)
    report = ImportReport(out, list(TOWERS))
    if heads is not None:
        report.heads["checkpoints"] = _attach_heads(m, heads)
    networks = list(TOWERS)
    if any(c.startswith("vqa_") for c in m.checkpoints):
        networks.append("vqa")
    if "img2prompt_a" in m.checkpoints or prompts is not None:
        if "prompt" not in m.tokenizers:
            from clipq.models.factory import wordpiece_tokenizer_file
            from clipq.models.io import write_tokenizer

            write_tokenizer(m, "prompt", wordpiece_tokenizer_file(), 128)
        networks += ["prompt_text", "ensemble_head"]
        if "img2prompt_a" in m.checkpoints:
            networks.append("img2prompt_a")
    m.save()
    report.seconds["load"] = round(time.perf_counter() - t0, 2)
    t1 = time.perf_counter()
    if openvino is None:
        from clipq.runtime.engines import ENGINES

        openvino = int8 and "openvino" in ENGINES and ENGINES["openvino"].installed
    opts = ExportOptions(int8=int8, openvino=bool(openvino), networks=networks, threads=threads,
                         parity_batches=parity_batches, **export_options_for_data(data, threads=threads))
    report.export = export_artifacts(out, opts)
    report.networks = list(report.export.networks)
    report.seconds["export"] = round(time.perf_counter() - t1, 2)
    if prompts is not None:
        from clipq.runtime.manifest import Manifest

        m = Manifest.load(out)
        report.heads["model_b"] = _attach_prompts(m, prompts, prompt_images, k, threads)
        m.save()
    report.seconds["total"] = round(time.perf_counter() - t0, 2)
    return report
