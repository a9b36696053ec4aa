"""``clipq bench --target triton --quick`` against a real tritonserver: the outputs have their shape."""

from __future__ import annotations

import argparse
import json

import pytest
from _require import require_module, require_triton

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(300)]
require_module("tritonclient.grpc")


def test_quick_bench_writes_json_markdown_and_png(tmp_path):
    require_triton()
    from clipq.app.bench import triton

    p = argparse.ArgumentParser()
    p.add_argument("--out")
    p.add_argument("--quick", action="store_true")
    triton.add_arguments(p)
    args = p.parse_args(["--out", str(tmp_path), "--quick", "--triton-protocols", "grpc,http"])
    assert triton.run(args) == 0

    result = json.loads((tmp_path / "triton.json").read_text())
    assert {"setup", "environment", "cells", "targets"} <= set(result)
    cells = result["cells"]
    modes = {(c["target"], c["mode"], c["batching"]) for c in cells if c["phase"] == "grid"}
    for target in ("clip_image", "embed_image", "embed_text"):
        assert (target, "in-process", "-") in modes
        for proto in ("grpc", "http"):
            assert (target, proto, "on") in modes and (target, proto, "off") in modes
    assert all(c["errors"] == 0 and c["requests"] > 0 and c["p50_ms"] > 0 for c in cells)
    assert any(c["server_avg_batch"] for c in cells if c["mode"] != "in-process")
    # Triton's per-stage statistics for every model a request crossed: one fused model, or the ensemble's steps
    lat = {(c["target"], c["mode"]): c for c in cells if c["phase"] == "latency"}
    fused, ens = lat[("embed_text", "grpc")], lat[("embed_text", "grpc-ensemble")]
    assert fused["pipeline"] == "fused" and set(fused["server_stages"]) == {"embed_text"}
    assert ens["pipeline"] == "ensemble" and {"embed_text", "tokenize_clip", "clip_text"} <= set(ens["server_stages"])
    for st in (*fused["server_stages"].values(), *ens["server_stages"].values()):
        assert st["requests"] > 0 and st["total_ms"] > 0
        assert all(st[f"{k}_ms"] >= 0 for k in ("queue", "compute_input", "compute_infer", "compute_output"))
    assert fused["server_stages"]["embed_text"]["compute_infer_ms"] > 0
    md = (tmp_path / "triton.md").read_text()
    assert "## Batch 1, concurrency 1" in md and "## Throughput" in md and "## Targets" in md
    assert "## Server-side stages at concurrency 1" in md and "grpc-ensemble" in md
    assert (tmp_path / "triton.png").stat().st_size > 1000
