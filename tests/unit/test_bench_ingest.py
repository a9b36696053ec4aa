"""`clipq bench --target ingest --quick` on generated phone photos and the shared test artifacts."""

from __future__ import annotations

import json

from _require import require_module


def test_ingest_bench_writes_its_table_and_figures(tiny_artifacts, tmp_path):
    require_module("skimage")
    from clipq.app.cli import main

    out = tmp_path / "bench"
    assert main(["bench", "--target", "ingest", "--quick", "--ingest-artifacts", str(tiny_artifacts),
                 "--out", str(out)]) == 0
    r = json.loads((out / "ingest.json").read_text())
    assert r["config"]["files"] == 8 and r["config"]["cores"] >= 1
    assert set(r["stages_ms"]) == {"draft", "full"}
    assert set(r["stages_ms"]["draft"]) == {"read", "decode", "resize", "normalise"}
    assert r["end_to_end_images_per_s"]["draft"] > 0 and r["machine_limit_images_per_s"] > 0
    assert r["peer_transformers"] is None  # no checkpoint given
    md = (out / "ingest.md").read_text()
    assert "machine's limit" in md and r["machine"]["cpu"] in md
    assert (out / "ingest.png").stat().st_size > 0
