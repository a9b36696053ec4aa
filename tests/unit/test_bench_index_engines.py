"""``clipq bench --target index --index-engines``: the engine benchmark's outputs on a small set.

Real hnswlib and faiss; checks what the run writes (every engine's build, sweep, summary and the
wrapper's comparison; the table and the plot), never how fast anything was.
"""

from __future__ import annotations

import argparse
import json

import pytest

from clipq.app.bench.index_engines import ENGINE_SWEEPS, run_engines

pytest.importorskip("faiss")


def test_engine_bench_writes_every_engine(tmp_path):
    args = argparse.Namespace(out=str(tmp_path), n=3000, dim=32, index_queries=50, threads=1, index_M=8,
                              index_efc=40, index_engines="hnswlib,sq8,sq4,ivfpq", quick=False, index_tmp=str(tmp_path))
    assert run_engines(args) == 0
    res = json.loads((tmp_path / "index_engines.json").read_text())
    assert set(res["builds"]) == {"hnswlib", "sq8", "sq4", "ivfpq"}
    for engine, b in res["builds"].items():
        assert b["params"]["name"] == engine and b["engine_bytes_per_vector"] > 0 and b["disk_bytes_per_vector"] > 0
        rows = [r for r in res["rows"] if r["engine"] == engine]
        assert [(r["value"], r["rescore"]) for r in rows] == ENGINE_SWEEPS[engine]
        assert all(0.0 <= r["recall"] <= 1.0 and r["qps_1t"] > 0 for r in rows)
        assert max(r["recall"] for r in rows) >= 0.9
        assert res["wrapper"][engine]["clipq_qps"] > 0 and res["wrapper"][engine]["raw_qps"] > 0
    # the compressed engines keep far fewer bytes in memory than float32 does
    assert res["builds"]["sq4"]["engine_bytes_per_vector"] < res["builds"]["hnswlib"]["engine_bytes_per_vector"] / 2
    md = (tmp_path / "index_engines.md").read_text()
    assert all(f"| {e} |" in md for e in res["builds"]) and "## Targets" in md
    assert (tmp_path / "index_engines.png").stat().st_size > 10_000
    assert not any(p.name.startswith("clipq-engines-") for p in tmp_path.iterdir())  # saved indexes removed
