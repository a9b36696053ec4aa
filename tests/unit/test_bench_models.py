"""``clipq bench --target models --quick``: the outputs are well formed (no timing assertions)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # optimum's export of the peer model
def test_quick_bench_writes_json_markdown_and_png(tmp_path):
    from clipq.app.cli import main

    out = tmp_path / "bench"
    rc = main(["bench", "--target", "models", "--quick", "--out", str(out), "--networks", "clip_image,clip_text",
               "--threads", "1"])
    assert rc == 0
    result = json.loads((out / "models.json").read_text())
    assert result["config"]["preset"] == "tiny" and result["config"]["quick"]
    rows = result["results"]
    seen = {(r["network"], r["engine"], r["batch"]) for r in rows}
    for net in ("clip_image", "clip_text"):
        for engine in ("pytorch_eager", "ort_default", "clipq_fp32", "clipq_opt", "clipq_int8"):
            for b in result["config"]["batches"]:
                assert (net, engine, b) in seen
    assert ("clip_image", "optimum_ort", 1) in seen or "optimum_ort" in result["skipped"].get("clip_image", {})
    for r in rows:
        assert r["p50_ms"] > 0 and r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["items_per_s"] > 0 and r["n"] >= 1
        if r["engine"].startswith("clipq_"):
            assert 0.9 <= r["cos_vs_fp32"] <= 1.0 + 1e-6
    assert set(result["summary"]) == {"clip_image", "clip_text"}
    assert "int8_vs_ort_b1" in result["summary"]["clip_image"]
    md = (out / "models.md").read_text()
    assert "| network | engine | batch | p50 ms |" in md and "| clip_text | clipq_int8 |" in md
    assert (out / "models.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
