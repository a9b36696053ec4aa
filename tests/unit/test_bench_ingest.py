"""`clipq bench --target ingest --quick` on generated phone photos and the shared test artifacts."""

from __future__ import annotations

import json

import pytest
from _require import require_module


def test_ingest_bench_writes_its_table_and_figures(tiny_artifacts, tmp_path, monkeypatch):
    require_module("skimage")
    require_module("fastembed")
    from clipq.app.cli import main

    out = tmp_path / "bench"
    # a machine without tritonserver: the Triton row says why, and every other row still runs
    monkeypatch.setenv("CLIPQ_TRITONSERVER", str(tmp_path / "no-tritonserver"))
    assert main(["bench", "--target", "ingest", "--quick", "--ingest-artifacts", str(tiny_artifacts),
                 "--ingest-paths", "triton,fastembed,clip-retrieval", "--out", str(out)]) == 0
    r = json.loads((out / "ingest.json").read_text())
    assert r["config"]["files"] == 8 and r["config"]["cores"] >= 1
    assert set(r["stages_ms"]) == {"draft", "full"}
    assert set(r["stages_ms"]["draft"]) == {"read", "decode", "resize", "normalise"}
    assert r["end_to_end_images_per_s"]["draft"] > 0 and r["machine_limit_images_per_s"] > 0
    assert r["peer_transformers"] is None  # no checkpoint given
    assert "tritonserver not found" in r["triton"]["not_measured"]
    assert r["ray"] is None  # not asked for
    # fastembed over clipq's own fp32 graph, offline: its default and its data-parallel workers
    fe = r["peer_fastembed"]
    assert fe["default"]["images_per_s"] > 0 and fe["default"]["parallel"] is None
    assert fe["parallel"]["images_per_s"] > 0 and fe["parallel"]["parallel"] == r["config"]["cores"]
    # clip-retrieval lives in its own environment: without one the row says why it was not measured
    assert "--ingest-clip-retrieval" in r["peer_clip_retrieval"]["not_measured"]
    md = (out / "ingest.md").read_text()
    assert "machine's limit" in md and r["machine"]["cpu"] in md
    assert "fastembed ImageEmbedding" in md and "clip-retrieval inference" in md
    assert "| through Triton | not measured: ServerError: tritonserver not found" in md
    assert "against the best user-written pipeline (fastembed" in md
    assert (out / "ingest.png").stat().st_size > 0


def test_fastembed_reads_clipq_graph_as_its_model(tiny_artifacts, tmp_path):
    """The directory fastembed is given embeds as clipq's fp32 graph does (same graph, CLIP preprocessing)."""
    require_module("fastembed")
    import numpy as np
    from PIL import Image

    from clipq.app.bench.ingest_peers import FASTEMBED_MODEL, fastembed_dir
    from clipq.runtime.backends.ort import OrtBackend
    from clipq.runtime.manifest import Manifest

    m = Manifest.load(tiny_artifacts)
    s = int(m.preprocessing["size"])
    path = tmp_path / "square.png"  # model-sized: no resampling difference between the two preprocessors
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (s, s, 3), dtype=np.uint8)).save(path)
    from fastembed import ImageEmbedding

    d = fastembed_dir(m, tmp_path / "work")
    got = np.asarray(list(ImageEmbedding(FASTEMBED_MODEL, specific_model_path=str(d)).embed([str(path)])))
    from clipq.runtime.preprocess import ImagePreprocessor

    ours = OrtBackend(m, variant="fp32").infer("clip_image", {"pixel_values": ImagePreprocessor.from_manifest(m)([path])})
    want = ours["image_embeds"] / np.linalg.norm(ours["image_embeds"], axis=1, keepdims=True)
    assert got.shape == want.shape
    assert float((got * want).sum()) > 0.999


@pytest.mark.timeout(300)
def test_ingest_bench_ray_row(tiny_artifacts, tmp_path):
    """clipq embed --ray's row: a local Ray, one actor per core, every photo embedded."""
    require_module("skimage")
    require_module("ray")
    from clipq.app.bench.ingest_paths import ray_row
    from clipq.app.bench.photos import phone_photos

    folder = tmp_path / "photos"
    files = phone_photos(folder, 2, size=(640, 480), others=False)
    row = ray_row(tiny_artifacts, folder, len(files), 2, 1)
    assert row["workers"] == 2 and row["skipped"] == 0 and row["shard_size"] == 1
    assert row["images_per_s"] > 0 and row["in_shard_images_per_s"] > 0 and row["startup_s"] > 0


def test_triton_instance_specs():
    from clipq.app.bench.ingest_paths import parse_instances
    from clipq.runtime.errors import InvalidInputError

    assert parse_instances(1) == (1, 0) and parse_instances("2") == (2, 0) and parse_instances("2x1") == (2, 1)
    assert parse_instances("2x") == (2, 0)  # no thread count: the engine's default
    for bad in ("0", "x2", "2x-1", "two"):
        with pytest.raises(InvalidInputError, match="NxT"):
            parse_instances(bad)
