"""``clipq bench --target index --index-engines``: the engine benchmark's outputs on a small set.

Real hnswlib and faiss; checks what the run writes (every engine's build, sweep, summary and the
wrapper's comparison; the table and the plot), never how fast anything was.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from _require import require_module

from clipq.app.bench.index_engines import ENGINE_SWEEPS, run_engines

require_module("faiss")


def test_engine_bench_writes_every_engine(tmp_path):
    args = argparse.Namespace(out=str(tmp_path), n=3000, dim=32, index_queries=50, threads=1, index_M=8,
                              index_efc=40, index_engines="hnswlib,sq8,sq4,ivfpq", quick=False, index_tmp=str(tmp_path))
    assert run_engines(args) == 0
    res = json.loads((tmp_path / "index_engines.json").read_text())
    assert set(res["builds"]) == {"hnswlib", "sq8", "sq4", "ivfpq"}
    for engine, b in res["builds"].items():
        assert b["params"]["name"] == engine and b["engine_bytes_per_vector"] > 0 and b["disk_bytes_per_vector"] > 0
        rows = [r for r in res["rows"] if r["engine"] == engine]
        got, sweep = [(r["value"], r["rescore"]) for r in rows], ENGINE_SWEEPS[engine]
        assert got[: len(sweep)] == sweep
        # below recall 0.99 the last setting's knob doubles, up to the engine's cap
        last_knob, last_rescore = sweep[-1]
        assert got[len(sweep):] == [(last_knob * 2 ** (i + 1), last_rescore) for i in range(len(got) - len(sweep))]
        if len(got) > len(sweep):
            assert max(r["recall"] for r in rows[:-1]) < 0.99
        assert all(0.0 <= r["recall"] <= 1.0 and r["qps_1t"] > 0 for r in rows)
        assert max(r["recall"] for r in rows) >= 0.9
        assert res["wrapper"][engine]["clipq_qps"] > 0 and res["wrapper"][engine]["raw_qps"] > 0
    # the compressed engines keep far fewer bytes in memory than float32 does
    assert res["builds"]["sq4"]["engine_bytes_per_vector"] < res["builds"]["hnswlib"]["engine_bytes_per_vector"] / 2
    md = (tmp_path / "index_engines.md").read_text()
    assert all(f"| {e} |" in md for e in res["builds"]) and "## Targets" in md
    assert (tmp_path / "index_engines.png").stat().st_size > 10_000
    assert not any(p.name.startswith("clipq-engines-") for p in tmp_path.iterdir())  # saved indexes removed


def test_engine_bench_streams_a_collection_larger_than_memory(tmp_path, monkeypatch):
    """The 10M path on a small set: drawn in blocks, exact search as a running top-k, engines built
    by adding the blocks with their floats spilled to disk; the same outputs as in memory."""
    import clipq.app.bench.index_engines as ie
    import clipq.runtime.index.vectorstore as vs

    monkeypatch.setattr(ie, "STREAM_BLOCK", 400)
    monkeypatch.setattr(vs, "SPILL_ROWS", 1000)
    monkeypatch.setenv("CLIPQ_SPILL_DIR", str(tmp_path))
    args = argparse.Namespace(out=str(tmp_path / "out"), n=3000, dim=32, index_queries=50, threads=1, index_M=8,
                              index_efc=40, index_engines="sq8,ivfpq", quick=False, index_tmp=str(tmp_path),
                              index_stream=True)
    assert run_engines(args) == 0
    res = json.loads((tmp_path / "out" / "index_engines.json").read_text())
    assert res["config"]["streamed"] is True and set(res["builds"]) == {"sq8", "ivfpq"}
    for engine in ("sq8", "ivfpq"):
        assert max(r["recall"] for r in res["rows"] if r["engine"] == engine) >= 0.9
    assert res["exact_qps"] > 0 and res["skipped"] == {}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("clipq-vectors-", "clipq-engines-"))]


def test_streamed_blocks_replay_the_same_rows():
    from clipq.app.bench.index_engines import clustered_blocks

    queries, blocks = clustered_blocks(1000, 16, n_clusters=10, seed=0, step=300)
    first = [(s, b.copy()) for s, b in blocks()]
    assert [s for s, _ in first] == [0, 300, 600, 900] and sum(len(b) for _, b in first) == 1000
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(first, blocks()))
    assert np.allclose(np.linalg.norm(queries(5), axis=1), 1.0)
