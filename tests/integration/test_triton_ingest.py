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
