"""The pipelines a user would otherwise write, on the ingest benchmark's photos and checkpoint.

- :func:`transformers_peer`: transformers' ``CLIPImageProcessor`` + ``CLIPModel.get_image_features``
  in PyTorch, batch 8, in a loop (the checkpoint's own directory).
- :func:`fastembed_peer`: Qdrant's fastembed as its README shows it,
  ``ImageEmbedding("Qdrant/clip-ViT-B-32-vision", specific_model_path=DIR)`` then
  ``embed(paths, parallel=...)``, over clipq's own fp32 ONNX image graph of the same checkpoint (the
  directory holds that graph as ``model.onnx`` and the checkpoint's ``preprocessor_config.json``,
  which is what fastembed reads from a model directory: nothing is downloaded). Measured with its
  default (``parallel=None``: one process, onnxruntime's threads) and with ``parallel`` = the cores
  (its data-parallel worker processes, one onnxruntime thread each); each call starts its own pool, as
  a user's script does.
- :func:`clip_retrieval_peer`: clip-retrieval's ``inference`` (``clip_inference``) where it can run
  on this checkpoint offline, from a separate virtual environment given by ``--ingest-clip-retrieval
  PYTHON``; otherwise the row is recorded as not measured, with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .index import best_time

BATCH = 8
#: fastembed's name of the CLIP ViT-B/32 image tower (the model description whose loader we reuse)
FASTEMBED_MODEL = "Qdrant/clip-ViT-B-32-vision"


def _clip_processor(checkpoint: str | Path | None, pre: dict[str, Any]) -> Any:
    """The checkpoint's CLIPImageProcessor, else one with the manifest's preprocessing (as `clipq import` reads it)."""
    import transformers

    if checkpoint is not None and (Path(checkpoint) / "preprocessor_config.json").is_file():
        return transformers.CLIPImageProcessor.from_pretrained(checkpoint)
    s = int(pre["size"])
    return transformers.CLIPImageProcessor(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                                           image_mean=list(pre["mean"]), image_std=list(pre["std"]))


def transformers_peer(checkpoint: str, files: list[Path], repeats: int) -> dict[str, float]:
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


def fastembed_dir(manifest: Any, work: Path, checkpoint: str | Path | None = None) -> Path:
    """A fastembed model directory over clipq's fp32 image graph: ``model.onnx`` (a link) + preprocessor_config.json."""
    d = work / "fastembed_clip_image"
    d.mkdir(parents=True, exist_ok=True)
    spec = manifest.model("clip_image")
    src = (manifest.root / spec.file).resolve()
    for f in [src, *sorted(src.parent.glob(src.name + ".data"))]:  # external weights travel with the graph
        link = d / ("model.onnx" if f == src else f.name)
        if not link.exists():
            link.symlink_to(f)
    _clip_processor(checkpoint, manifest.preprocessing).save_pretrained(d)
    return d


def fastembed_peer(manifest: Any, files: list[Path], work: Path, repeats: int, cores: int,
                   checkpoint: str | Path | None = None) -> dict[str, Any]:
    """fastembed's ImageEmbedding on the folder, its default and with ``parallel`` = cores (see the module).

    Returns:
        ``{"default": {...}, "parallel": {...}, "best": name}``; each ``{"images_per_s", "parallel",
        "errors"}``, or ``{"not_measured": reason}`` where fastembed raised.
    """
    from fastembed import ImageEmbedding

    d = fastembed_dir(manifest, work, checkpoint)
    paths = [str(f) for f in files]
    model = ImageEmbedding(model_name=FASTEMBED_MODEL, specific_model_path=str(d))
    out: dict[str, Any] = {"model_dir": str(d), "batch_size": 16}
    for key, parallel in (("default", None), ("parallel", cores)):
        try:
            list(model.embed(paths[:2], parallel=None))  # the session's first run is start-up
            t = best_time(lambda p=parallel: list(model.embed(paths, parallel=p)), repeats)
            out[key] = {"images_per_s": len(paths) / t, "parallel": parallel}
            print(f"ingest: fastembed parallel={parallel}: {out[key]['images_per_s']:.1f} images/s", flush=True)
        except Exception as e:  # noqa: BLE001 - the peer's own failure is a finding, recorded as such
            out[key] = {"not_measured": f"{type(e).__name__}: {e}"[:300], "parallel": parallel}
    measured = {k: v for k, v in out.items() if isinstance(v, dict) and "images_per_s" in v}
    out["best"] = max(measured, key=lambda k: measured[k]["images_per_s"]) if measured else None
    return out


#: runs inside clip-retrieval's own environment: its documented ``clip_inference`` on a folder
_CLIP_RETRIEVAL = r"""
import json, sys, time
from clip_retrieval.clip_inference.main import main as clip_inference
folder, out, model, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t = time.perf_counter()
clip_inference(input_dataset=folder, output_folder=out, input_format="files", clip_model=model,
               batch_size=batch, enable_text=False, enable_metadata=False, num_prepro_workers=int(sys.argv[5]))
seconds = time.perf_counter() - t
# its own statistics (per worker): the span that read, preprocessed and embedded, model loading excluded
import glob, os
st = [json.load(open(f)) for f in glob.glob(os.path.join(out, "stats", "*.json"))]
work = max(x["end_time"] for x in st) - min(x["start_time"] for x in st) if st else None
import torch
from importlib.metadata import version
print("\nCLIPQ_RESULT " + json.dumps({"seconds": seconds, "work_seconds": work, "torch": torch.__version__,
                                    "clip_retrieval": version("clip-retrieval"),
                                    "count": sum(x["sample_count"] for x in st)}), flush=True)
"""


def clip_retrieval_peer(python: str | None, folder: Path, n_files: int, checkpoint: str | None,
                        cores: int, timeout_s: float = 900.0) -> dict[str, Any]:
    """clip-retrieval's ``clip_inference`` on the folder with the checkpoint, offline, in its own environment.

    clip-retrieval pins its own torch and open_clip, so it runs from another interpreter (``python``),
    never clipq's environment; its model is ``hf_clip:<checkpoint dir>`` (transformers' CLIP).

    Returns:
        ``{"images_per_s"`` (its own statistics' span: model loading excluded, as the other rows'
        after start-up), ``"whole_command_images_per_s"``, ``"seconds"``, ``"embedded"}``, or
        ``{"not_measured": reason}``.
    """
    if not python:
        return {"not_measured": "no clip-retrieval environment given (--ingest-clip-retrieval PYTHON): it pins "
                                "torch/open_clip versions of its own and is not installed beside clipq"}
    if not checkpoint:
        return {"not_measured": "no transformers checkpoint given (--ingest-checkpoint): clip-retrieval loads "
                                "its model from a checkpoint, not from clipq's graphs"}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="clipq-ingest-cr-") as out:
        try:
            p = subprocess.run([python, "-c", _CLIP_RETRIEVAL, str(folder), str(Path(out) / "emb"),
                                f"hf_clip:{checkpoint}", str(BATCH), str(cores)],
                               capture_output=True, text=True, timeout=timeout_s, env=env)
        except (OSError, subprocess.TimeoutExpired) as e:
            return {"not_measured": f"{type(e).__name__}: {e}"[:300]}
        if p.returncode != 0:
            tail = (p.stderr or p.stdout).strip().splitlines()
            return {"not_measured": f"clip_inference failed offline on this checkpoint: "
                                    f"{tail[-1] if tail else 'exit ' + str(p.returncode)}"[:400]}
        try:
            # its progress lines share stdout: the result is the line after our marker
            got = json.loads(p.stdout.rsplit("CLIPQ_RESULT ", 1)[1].splitlines()[0])
            seconds, work, count = float(got["seconds"]), got["work_seconds"], int(got["count"])
        except (ValueError, KeyError, IndexError, TypeError):
            return {"not_measured": f"clip_inference printed no timing: {p.stdout[-200:]!r}"}
    return {"images_per_s": count / work if work else 0.0, "whole_command_images_per_s": count / seconds,
            "seconds": seconds, "embedded": count, "files": n_files,
            "versions": {"torch": got.get("torch"), "clip_retrieval": got.get("clip_retrieval")},
            "setup": "python -m venv; pip install torch clip-retrieval 'setuptools<81' (its clip package "
                     "imports pkg_resources); clip_model=hf_clip:<checkpoint>, input_format=files, batch 8"}
