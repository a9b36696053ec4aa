"""``clipq bench --target ingest``: phone photos to an index, in process, against the machine's limit.

On a folder of photos (by default :func:`clipq.app.bench.photos.phone_photos`: 24 phone-shaped
12 MP JPEGs and five other forms; any folder with ``--ingest-photos``) it measures, in one run:

- per-stage times on one thread, with decoding at the size the model needs (draft) and at full
  resolution: read, decode, resize + crop, normalise (ms per image);
- the model alone (the artifact's CPU default, batch 8): ms per image and core-ms per image;
- end to end in process (``ImageIndex.from_images``, what ``clipq index build`` runs), draft on and
  off, after start-up;
- the machine's limit for this pipeline: cores / (decode core-ms + model core-ms per image);
- with ``--ingest-checkpoint`` (a transformers CLIP directory), the loop a user would otherwise write:
  transformers' ``CLIPImageProcessor`` + the model's ``get_image_features`` in PyTorch, batch 8.

Every figure comes from one run on one machine; with shared cores compare within a run only.
Writes ``<out>/ingest.json``, ``<out>/ingest.md`` and ``<out>/ingest.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from .index import best_time  # fastest of n runs: the least disturbed figure on shared cores

BATCH = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ingest benchmark (``--out`` and ``--quick`` come from ``clipq bench``)."""
    g = parser
    g.add_argument("--ingest-photos", default=None, metavar="DIR",
                   help="ingest: a photo folder (default: a generated phone-photo folder)")
    g.add_argument("--ingest-n", type=int, default=None, help="ingest: generated photos (default 24; 3 quick)")
    g.add_argument("--ingest-artifacts", default=None, metavar="DIR",
                   help="ingest: artifact directory (default: $CLIPQ_ARTIFACTS or the demo's)")
    g.add_argument("--ingest-checkpoint", default=None, metavar="DIR",
                   help="ingest: a transformers CLIP checkpoint for the user-written peer (skipped without)")


def stage_ms(files: list[Path], pre: Any) -> dict[str, float]:
    """Mean ms per image of read, decode, resize + crop and normalise on this thread."""
    from clipq.runtime.preprocess import decode_image

    tot = {"read": 0.0, "decode": 0.0, "resize": 0.0, "normalise": 0.0}
    for f in files:
        t0 = time.perf_counter()
        data = f.read_bytes()
        t1 = time.perf_counter()
        img = decode_image(data, max_pixels=pre.max_pixels, draft_short=pre._draft_short)
        t2 = time.perf_counter()
        img = pre.resize_crop(img)
        t3 = time.perf_counter()
        pre.normalize(img)
        t4 = time.perf_counter()
        for k, dt in zip(tot, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            tot[k] += dt
    return {k: 1e3 * v / len(files) for k, v in tot.items()}


def _model(backend: Any, pixels: Any, repeats: int) -> dict[str, float]:
    backend.infer("clip_image", {"pixel_values": pixels})
    rounds = 4
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(rounds):
            backend.infer("clip_image", {"pixel_values": pixels})
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    n = rounds * len(pixels)
    return {"ms_per_image": 1e3 * wall / n, "core_ms_per_image": 1e3 * cpu / n}


def _peer(checkpoint: str, files: list[Path], repeats: int) -> dict[str, float]:
    """transformers' CLIPImageProcessor + CLIPModel.get_image_features, batch 8, as a user's loop."""
    import torch
    import transformers
    from PIL import Image

    # a checkpoint without preprocessor_config.json gets CLIP's defaults, as `clipq import` gives it
    proc = (transformers.CLIPImageProcessor.from_pretrained(checkpoint)
            if (Path(checkpoint) / "preprocessor_config.json").is_file() else transformers.CLIPImageProcessor())
    model = transformers.CLIPModel.from_pretrained(checkpoint).eval()
    pre_s = model_s = 0.0

    def loop() -> None:
        nonlocal pre_s, model_s
        pre_s = model_s = 0.0
        for s in range(0, len(files), BATCH):
            t0 = time.perf_counter()
            images = [Image.open(f).convert("RGB") for f in files[s:s + BATCH]]
            px = proc(images=images, return_tensors="pt")["pixel_values"]
            t1 = time.perf_counter()
            with torch.inference_mode():
                model.get_image_features(pixel_values=px)
            model_s += time.perf_counter() - t1
            pre_s += t1 - t0

    total = best_time(loop, repeats)
    return {"images_per_s": len(files) / total, "preprocess_ms": 1e3 * pre_s / len(files),
            "model_ms": 1e3 * model_s / len(files)}


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and write ingest.json, ingest.md and ingest.png under ``args.out``."""
    import numpy as np

    from clipq.app.bench.index import _machine
    from clipq.app.bench.photos import phone_photos
    from clipq.runtime import ClipEncoder, connect
    from clipq.runtime.connect import default_artifacts
    from clipq.runtime.feed import usable_cores
    from clipq.runtime.index import ImageIndex, list_images
    from clipq.runtime.manifest import Manifest
    from clipq.runtime.preprocess import ImagePreprocessor

    quick = bool(getattr(args, "quick", False))
    repeats = 1 if quick else 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    art = getattr(args, "ingest_artifacts", None) or os.environ.get("CLIPQ_ARTIFACTS") or str(default_artifacts())
    tmp = None
    if getattr(args, "ingest_photos", None):
        folder = Path(args.ingest_photos)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="clipq-ingest-")
        folder = Path(tmp.name)
        n = getattr(args, "ingest_n", None) or (3 if quick else 24)
        print(f"ingest: writing {n} phone-shaped photos (+5 other forms) to {folder}")
        phone_photos(folder, n)
    try:
        files = list_images(folder)
        m = Manifest.load(art)
        cores = usable_cores()
        stages = {}
        for draft in (True, False):
            pre = ImagePreprocessor.from_manifest(m, draft=draft)
            stage_ms(files[:2], pre)  # warm the caches
            stages["draft" if draft else "full"] = stage_ms(files, pre)
        backend = connect(art, spin=False)
        try:
            enc = ClipEncoder(backend)
            pre = enc.preprocessor
            pixels = np.stack([pre.one(f) for f in (files * BATCH)[:BATCH]])
            model = _model(backend, pixels, repeats)
            enc.encode_images([files[0]])  # start-up: sessions, the decode pool
            e2e = {}
            for draft in (True, False):
                enc.path._pre = ImagePreprocessor.from_manifest(m, draft=draft)  # type: ignore[attr-defined]
                t = best_time(lambda: ImageIndex.from_images(folder, enc, progress=False), repeats)
                e2e["draft" if draft else "full"] = len(files) / t
        finally:
            backend.close()
        decode_core_ms = sum(stages["draft"].values())
        limit = cores / (1e-3 * (decode_core_ms + model["core_ms_per_image"]))
        peer = None
        if getattr(args, "ingest_checkpoint", None):
            peer = _peer(args.ingest_checkpoint, files, repeats)
        result = {
            "target": "ingest", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": _machine(),
            "config": {"artifacts": str(art), "photos": str(folder), "files": len(files), "cores": cores,
                       "batch_model": BATCH, "quick": quick, "repeats": repeats},
            "stages_ms": stages, "model": model, "end_to_end_images_per_s": e2e,
            "model_only_images_per_s": 1e3 / model["ms_per_image"], "machine_limit_images_per_s": limit,
            "share_of_limit": e2e["draft"] / limit, "peer_transformers": peer,
        }
    finally:
        if tmp is not None:
            tmp.cleanup()
    (out / "ingest.json").write_text(json.dumps(result, indent=2))
    (out / "ingest.md").write_text(markdown(result))
    plot(result, out / "ingest.png")
    print(markdown(result))
    return 0


def markdown(r: dict[str, Any]) -> str:
    """The result as a markdown table with the machine named."""
    c, s = r["config"], r["stages_ms"]
    lines = [f"# Ingest: {c['files']} photos, {r['machine']['cpu']}, {c['cores']} cores ({r['date']})", "",
             "| stage (ms per image, one thread) | draft | full |", "|---|---|---|"]
    lines += [f"| {k} | {s['draft'][k]:.1f} | {s['full'][k]:.1f} |" for k in s["draft"]]
    lines += ["", "| pipeline | images/s |", "|---|---|",
              f"| in process, draft (default) | {r['end_to_end_images_per_s']['draft']:.1f} |",
              f"| in process, full decoding | {r['end_to_end_images_per_s']['full']:.1f} |",
              f"| model alone (batch {c['batch_model']}) | {r['model_only_images_per_s']:.1f} |",
              f"| machine's limit: cores / (decode + model core-ms) | {r['machine_limit_images_per_s']:.1f} |"]
    if r.get("peer_transformers"):
        p = r["peer_transformers"]
        lines.append(f"| transformers CLIPImageProcessor + model, batch 8 ({p['preprocess_ms']:.0f} + "
                     f"{p['model_ms']:.0f} ms per image) | {p['images_per_s']:.1f} |")
    lines += ["", f"In process, draft: {100 * r['share_of_limit']:.0f} % of the machine's limit "
              f"(model {r['model']['core_ms_per_image']:.1f} core-ms per image)."]
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], path: Path) -> None:
    """A bar chart of the pipelines' images/s (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - bench extra
        return
    bars = {"draft": r["end_to_end_images_per_s"]["draft"], "full decoding": r["end_to_end_images_per_s"]["full"],
            "model alone": r["model_only_images_per_s"], "machine limit": r["machine_limit_images_per_s"]}
    if r.get("peer_transformers"):
        bars["transformers loop"] = r["peer_transformers"]["images_per_s"]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.barh(list(bars), list(bars.values()), color=["C0", "C1", "C2", "C7", "C3"][:len(bars)])
    ax.invert_yaxis()
    ax.set_xlabel("images/s")
    ax.set_title(f"{r['config']['files']} photos, {r['machine']['cpu']}, {r['config']['cores']} cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
