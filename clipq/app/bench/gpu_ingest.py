"""JPEG bytes -> embeddings on one GPU (issue 29 part 5): nvJPEG decode, resize on the GPU, fp16 ViT-B/32.

A prepared script for a machine with an NVIDIA GPU (never a test dependency; it fails at once, saying
why, without CUDA or torchvision)::

    python -m clipq.app.bench.gpu_ingest --out gpu_ingest [--batches 64,128,256,512] [--budget-s 400]

What it measures, on phone-shaped 12 MP JPEGs (:func:`clipq.app.bench.photos.phone_photos`, in
memory: the bytes a server receives):

- per batch size: ``torchvision.io.decode_jpeg(list of bytes, device="cuda")`` (nvJPEG, batched),
  the shorter side to 224 with antialiased bicubic interpolation and a centre crop on the GPU
  (:func:`gpu_preprocess`, CLIP's preprocessing), CLIP's normalisation, then a ViT-B/32 image tower
  (transformers' ``CLIPVisionModelWithProjection`` with ``CLIPVisionConfig`` defaults and random
  weights, fp16) and L2 normalisation: images/s end to end, and the ms per image of each stage;
- the model alone at the same batch (fp16 pixels already on the GPU): its images/s ceiling.

Every cell stops after ``--budget-s`` / cells seconds (the whole run <= 8 minutes by default,
start-up included). The photos are decoded in chunks of ``--decode-chunk`` so 512 decoded 12 MP
images never sit in GPU memory at once. nvJPEG does not apply EXIF orientation (the photos written
here have it in one of three): the CPU runtime's parity (docs/export.md) is not claimed here.
Writes ``<out>/gpu_ingest.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
SIZE = 224


class NoGpuError(RuntimeError):
    """The script needs CUDA (and torchvision's nvJPEG decoder); the message says what is missing."""


def gpu_preprocess(images: list[Any], size: int = SIZE, dtype: Any = None) -> Any:
    """uint8 [3, H, W] tensors (any device) -> normalised [N, 3, size, size]: CLIP's resize + crop, on their device.

    The shorter side goes to ``size`` (bicubic, antialiased, as Pillow's reducing resample), then a
    centre crop; pixels are scaled to [0, 1] and normalised with CLIP's mean and std. Runs wherever
    the tensors are: on the GPU in the benchmark, on the CPU in the tests.
    """
    import torch
    import torch.nn.functional as F

    out = []
    for img in images:
        _, h, w = img.shape
        s = size / min(h, w)
        nh, nw = max(size, round(h * s)), max(size, round(w * s))
        x = F.interpolate(img.unsqueeze(0).float(), size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        top, left = (nh - size) // 2, (nw - size) // 2
        out.append(x[:, :, top:top + size, left:left + size])
    x = torch.cat(out).clamp_(0, 255).div_(255.0)
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x if dtype is None else x.to(dtype)


def require_gpu() -> tuple[Any, Any]:
    """(torch, torchvision.io) with CUDA ready.

    Raises:
        NoGpuError: no CUDA device, a CPU-only torch, or no torchvision.
    """
    import torch

    if not torch.cuda.is_available():
        raise NoGpuError(f"no CUDA device (torch {torch.__version__}, cuda build {torch.version.cuda}): this "
                         "benchmark decodes with nvJPEG and runs the model on the GPU; run it on a GPU machine")
    try:
        import torchvision.io as tvio
    except ImportError as e:
        raise NoGpuError("torchvision is not installed: pip install torchvision matching torch "
                         f"{torch.__version__} (its io.decode_jpeg is nvJPEG on device='cuda')") from e
    return torch, tvio


def jpeg_bytes(n: int, size: tuple[int, int]) -> list[bytes]:
    """``n`` phone-shaped JPEGs (quality 92, sensor noise), encoded in memory."""
    from .photos import SOURCES, phone_photo

    out = []
    for i in range(n):
        buf = io.BytesIO()
        phone_photo(SOURCES[i % len(SOURCES)], i, size).save(buf, format="JPEG", quality=92)
        out.append(buf.getvalue())
    return out


def _model(torch: Any) -> Any:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    m = CLIPVisionModelWithProjection(CLIPVisionConfig(projection_dim=512)).eval().half().cuda()
    return m


def _cell(torch: Any, tvio: Any, model: Any, photos: list[Any], batch: int, chunk: int, seconds: float) -> dict[str, Any]:
    """Batches of ``batch`` photos (cycled) end to end and the model alone, for about ``seconds``."""
    import torch.nn.functional as F

    sync = torch.cuda.synchronize
    stage = {"decode": 0.0, "preprocess": 0.0, "model": 0.0}
    n_done = 0
    pixels = None
    i = 0

    def one() -> Any:
        nonlocal i, pixels
        datas = [photos[(i + k) % len(photos)] for k in range(batch)]
        i += batch
        parts = []
        for s in range(0, batch, chunk):
            t0 = time.perf_counter()
            imgs = tvio.decode_jpeg(datas[s:s + chunk], device="cuda")
            sync()
            t1 = time.perf_counter()
            parts.append(gpu_preprocess(imgs, dtype=torch.float16))
            del imgs
            sync()
            t2 = time.perf_counter()
            stage["decode"] += t1 - t0
            stage["preprocess"] += t2 - t1
        pixels = torch.cat(parts)
        t0 = time.perf_counter()
        with torch.inference_mode():
            emb = F.normalize(model(pixel_values=pixels).image_embeds.float(), dim=-1)
        sync()
        stage["model"] += time.perf_counter() - t0
        return emb

    one()  # warm-up: nvJPEG handles, cuDNN/cuBLAS kernels for this shape
    for k in stage:
        stage[k] = 0.0
    t = time.perf_counter()
    while True:
        one()
        n_done += batch
        if time.perf_counter() - t >= seconds:
            break
    e2e = n_done / (time.perf_counter() - t)
    # the model alone on the last batch's pixels
    t, n_model = time.perf_counter(), 0
    with torch.inference_mode():
        while time.perf_counter() - t < seconds / 3 or n_model == 0:
            model(pixel_values=pixels)
            sync()
            n_model += batch
    model_only = n_model / (time.perf_counter() - t)
    return {"batch": batch, "images": n_done, "images_per_s": e2e, "model_only_images_per_s": model_only,
            "ms_per_image": {k: 1e3 * v / n_done for k, v in stage.items()},
            "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30}


def run(args: argparse.Namespace) -> int:
    """Measure every batch size and write gpu_ingest.json / .md / .png under ``args.out``."""
    t_start = time.perf_counter()
    torch, tvio = require_gpu()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    batches = [int(b) for b in str(args.batches).split(",") if b.strip()]
    photos_bytes = jpeg_bytes(args.photos, (args.width, args.height))
    photos = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in photos_bytes]
    model = _model(torch)
    setup_s = time.perf_counter() - t_start
    per_cell = max(5.0, (args.budget_s - setup_s) / max(1, len(batches)) / 1.4)  # 1.4: warm-up + model-alone share
    print(f"gpu_ingest: {torch.cuda.get_device_name(0)}, {len(photos)} photos of {args.width}x{args.height}, "
          f"set up in {setup_s:.0f} s, {per_cell:.0f} s per batch size", flush=True)
    cells = []
    for b in batches:
        torch.cuda.reset_peak_memory_stats()
        c = _cell(torch, tvio, model, photos, b, args.decode_chunk, per_cell)
        print(f"gpu_ingest: batch {b}: {c['images_per_s']:.0f} images/s end to end, model alone "
              f"{c['model_only_images_per_s']:.0f}, ms/image {c['ms_per_image']}", flush=True)
        cells.append(c)
    result = {"target": "gpu_ingest", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "photos": {"count": len(photos), "size": [args.width, args.height],
                         "mean_bytes": sum(map(len, photos_bytes)) / len(photos_bytes)},
              "model": "CLIPVisionModelWithProjection (ViT-B/32 defaults), random weights, fp16",
              "cells": cells, "seconds": time.perf_counter() - t_start}
    (out / "gpu_ingest.json").write_text(json.dumps(result, indent=2))
    (out / "gpu_ingest.md").write_text(markdown(result))
    _plot(result, out / "gpu_ingest.png")
    print(markdown(result))
    return 0


def markdown(r: dict[str, Any]) -> str:
    """The result as a table with the GPU named."""
    lines = [f"# JPEG bytes -> embeddings on {r['gpu']} ({r['date']})", "",
             f"{r['photos']['count']} JPEGs of {r['photos']['size'][0]} x {r['photos']['size'][1]}, {r['model']}.", "",
             "| batch | images/s end to end | model alone | decode ms/image | preprocess ms/image | model ms/image "
             "| peak GiB |", "|---|---|---|---|---|---|---|"]
    for c in r["cells"]:
        ms = c["ms_per_image"]
        lines.append(f"| {c['batch']} | {c['images_per_s']:.0f} | {c['model_only_images_per_s']:.0f} | "
                     f"{ms['decode']:.2f} | {ms['preprocess']:.2f} | {ms['model']:.2f} | {c['max_memory_gib']:.1f} |")
    return "\n".join(lines) + "\n"


def _plot(r: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - bench extra
        return
    b = [c["batch"] for c in r["cells"]]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(b, [c["images_per_s"] for c in r["cells"]], "o-", label="JPEG bytes -> embeddings")
    ax.plot(b, [c["model_only_images_per_s"] for c in r["cells"]], "s--", label="model alone (fp16)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch")
    ax.set_ylabel("images/s")
    ax.set_title(r["gpu"], fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clipq.app.bench.gpu_ingest", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="gpu_ingest", help="output folder (default %(default)s)")
    p.add_argument("--batches", default="64,128,256,512", help="batch sizes (default %(default)s)")
    p.add_argument("--photos", type=int, default=32, help="distinct photos, cycled (default %(default)s)")
    p.add_argument("--width", type=int, default=4032)
    p.add_argument("--height", type=int, default=3024)
    p.add_argument("--decode-chunk", type=int, default=64, help="photos decoded at once (default %(default)s)")
    p.add_argument("--budget-s", type=float, default=400.0,
                   help="seconds for the whole run, start-up included (default %(default)s: under 8 minutes)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 2 with the reason where there is no GPU to run on."""
    args = parser().parse_args(argv)
    try:
        return run(args)
    except NoGpuError as e:
        print(f"gpu_ingest: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
