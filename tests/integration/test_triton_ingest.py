"""`clipq bench --target ingest`'s Triton rows: a real tritonserver, JPEG bytes to embed_image at each concurrency."""

from __future__ import annotations

import pytest
from _require import require_module, require_triton

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(300)]
require_module("tritonclient.grpc")


def test_triton_rows_embed_every_photo_at_each_concurrency(tiny_artifacts, tmp_path):
    require_triton()
    require_module("skimage")
    from clipq.app.bench.ingest import markdown
    from clipq.app.bench.ingest_paths import triton_rows
    from clipq.app.bench.photos import phone_photos

    files = phone_photos(tmp_path / "photos", 3, size=(1024, 768))
    runs = triton_rows(tiny_artifacts, files, [1, 2], 1, work=tmp_path / "work", instances=[1, 2])
    assert [run["instances"] for run in runs] == [1, 2]  # two servers, passes alternating
    for run in runs:
        assert [row["concurrency"] for row in run["rows"]] == [1, 2]
        for row in run["rows"]:
            assert row["errors"] == [] and row["images_per_s"] > 0 and row["p50_ms"] > 0
            st = row["stages"]  # Triton's own statistics of the fused model over the pass: one request per photo
            assert st["requests"] == len(files) and st["compute_infer_ms"] > 0 and st["avg_batch"] >= 1
        assert run["server_version"] and run["startup_s"] > 0
    r = runs[0]
    # the markdown of a result carrying these rows has the Triton table
    fake = {"config": {"files": len(files), "cores": 2, "batch_model": 8}, "machine": {"cpu": "cpu"}, "date": "d",
            "stages_ms": {"draft": {"read": 1.0}, "full": {"read": 1.0}}, "model": {"core_ms_per_image": 1.0},
            "end_to_end_images_per_s": {"draft": 1.0, "full": 1.0}, "model_only_images_per_s": 1.0,
            "machine_limit_images_per_s": 2.0, "share_of_limit": 0.5, "triton": r,
            "triton_other_instances": runs[1:]}
    md = markdown(fake)
    assert "through Triton, concurrency 2" in md and "through Triton, concurrency 2, 2 instances" in md
    assert "compute infer" in md


def test_instances_split_the_servers_cores(tiny_artifacts, tmp_path):
    """Two instances of each model: each engine gets cores // 2 threads (said in the server's log), and both answer."""
    require_triton()
    import io

    import numpy as np
    from PIL import Image

    from clipq.runtime import connect
    from clipq.runtime.feed import usable_cores
    from clipq.runtime.manifest import Manifest
    from clipq.serving import RenderOptions, render_repository
    from clipq.serving.server import TritonServer

    m = Manifest.load(tiny_artifacts)
    repo = render_repository(m, tmp_path / "repo", RenderOptions(pipelines="fused", instances=2),
                             models=["clip_image", "embed_image", "clipq_info"])
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(buf, "JPEG")
    with TritonServer(repo.path) as server:
        line = f"clip_image: 2 instances on {usable_cores()} cores: {max(1, usable_cores() // 2)} engine thread(s) each"
        # clip_image's two instances and embed_image's two (its network is clip_image)
        assert "\n".join(server.log).count(line) == 4, [x for x in server.log if "instances on" in x]
        c = connect(server=server.grpc_url)
        try:
            outs = [c.infer("embed_image", {"image": [buf.getvalue()]}) for _ in range(4)]
        finally:
            c.close()
    dim = m.model("clip_image").outputs[0].shape[-1]
    assert all(o["image_embeds"].shape == (1, dim) for o in outs)
