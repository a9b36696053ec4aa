"""``clipq bench --target models --quick``: the outputs are well formed (no timing assertions)."""

from __future__ import annotations

import json

import pytest
from _require import require_module

require_module("torch")
require_module("matplotlib")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # optimum's export of the peer model
def test_quick_bench_writes_json_markdown_and_png(tmp_path):
    from clipq.app.bench.models import CLIPQ, PEERS, SLOW
    from clipq.app.cli import main
    from clipq.export.parity import FP32, REDUCED

    out = tmp_path / "bench"
    rc = main(["bench", "--target", "models", "--quick", "--out", str(out), "--networks", "clip_image,clip_text",
               "--threads", "1"])
    assert rc == 0
    result = json.loads((out / "models.json").read_text())
    assert result["config"]["preset"] == "tiny" and result["config"]["quick"]
    assert "own process" in result["config"]["isolation"]
    rows = result["results"]
    seen = {(r["network"], r["engine"], r["batch"]) for r in rows}
    skipped = result["skipped"]
    for net in ("clip_image", "clip_text"):
        for engine in (*PEERS, *CLIPQ):
            for b in result["config"]["batches"]:
                # every engine ran, or says why not (optimum has no text tower; bf16 needs a CPU with it)
                assert (net, engine, b) in seen or engine in skipped.get(net, {}) or engine in skipped.get("*", {}), \
                    (net, engine)
    for e in SLOW:
        assert "--quick" in skipped["*"][e]
    if not (result["machine"]["flags"]["avx512_bf16"] or result["machine"]["flags"]["amx_bf16"]):
        assert skipped["clip_image"]["torch_bf16"].startswith("skipped: no bf16 on this CPU")
    assert "optimum" in skipped["clip_text"]["optimum_ort"]
    compared = 0
    for r in rows:
        assert r["p50_ms"] > 0 and r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["items_per_s"] > 0 and r["n"] >= 1
        assert r["precision"] in ("fp32", "bf16", "int8") and r["tops"] > 0
        # the figures follow from the MAC count, the throughput and the peak, recomputed here
        macs = result["macs_per_call"][r["network"]][str(r["batch"])]
        assert r["tops"] == pytest.approx(2 * macs / r["batch"] * r["items_per_s"] / 1e12, rel=1e-9)
        pk = result["peaks"][r["precision"]]
        assert r["peak_tops"] == pytest.approx(pk["peak_tops"], rel=1e-9) and pk["peak_tops"] > 0
        assert r["pct_of_peak"] == pytest.approx(100 * r["tops"] / pk["peak_tops"], rel=1e-9)
        if pk["clock_is_max"]:  # the peak at the max (boost) clock is a true upper bound
            assert 0 < r["pct_of_peak"] < 100, r
        else:  # only the nominal clock is known (a VM): boost may exceed it (Zen 3 EPYC: 2.45 -> 3.5 GHz, 1.43x)
            assert 0 < r["pct_of_peak"] < 150, r
            assert "boost may run above it" in pk["clock"]
        if r["engine"].startswith("clipq_") or r["engine"].startswith("ov_") or r["engine"] == "ort_optimum_int8":
            # the export's own parity gate (export/parity.py): fp32 graphs 0.9999, reduced precision 0.99
            gate = FP32 if r["precision"] == "fp32" else REDUCED
            assert gate.min_cos <= r["cos_vs_fp32"] <= 1.0 + 1e-6, r
            compared += 1
    assert compared >= 4  # clipq_fp32 and clipq_int8 at least, on both networks
    default = [r for r in rows if r["engine"] == "clipq_default"]
    assert default and all("/" in r["choice"] for r in default)  # the engine/variant the manifest recorded
    assert set(result["summary"]) == {"clip_image", "clip_text"}
    s = result["summary"]["clip_image"]
    assert {"int8_vs_ort_b1", "default_vs_ort_b1", "default_vs_best_peer_b1"} <= set(s)
    assert result["best_peer"]["clip_image"]["1"] in PEERS
    m = result["machine"]
    assert m["cpu"] and "amx_int8" in m["flags"] and "cores" in m["topology"]
    assert {"int8", "bf16", "fp32"} <= set(result["peaks"]) and result["macs_per_call"]["clip_image"]["1"] > 0
    md = (out / "models.md").read_text()
    assert "| network | engine | batch | p50 ms |" in md and "| clip_text | clipq_int8 |" in md
    assert "x best" in md and "% peak" in md and "TOPS" in md
    assert (out / "models.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mac_count_and_peaks():
    from clipq.app.bench.macs import cores_text, peak

    facts = {"flags": {"amx_int8": True, "avx512_vnni": True}, "threads_per_core": 1, "logical_cpus": 2, "mhz": 2000.0}
    p = peak(facts, "int8", 2)
    assert p["isa"] == "amx_int8" and p["macs_per_cycle_per_core"] == 1024
    assert p["peak_tops"] == pytest.approx(2 * 1024 * 2 * 2.0e9 / 1e12)
    vnni = peak({**facts, "flags": {"avx512_vnni": True}}, "int8", 2)
    assert vnni["macs_per_cycle_per_core"] == 128 and "two FMA ports" in vnni["assumes"]
    ht = {**facts, "threads_per_core": 2}
    assert peak(ht, "int8", 2)["cores"] == 1 and "hyper-threads" in cores_text(ht)
    assert "1 thread per core" in cores_text(facts)
    # the max (boost) clock, where the OS reports one, makes the peak an upper bound
    assert not p["clock_is_max"] and "boost may run above it" in p["clock"]
    boost = peak({**facts, "max_mhz": 3500.0}, "int8", 2)
    assert boost["clock_is_max"] and boost["peak_tops"] == pytest.approx(2 * 1024 * 2 * 3.5e9 / 1e12)


def test_max_clock_from_cpufreq(tmp_path, monkeypatch):
    import subprocess

    from clipq.app.bench import macs

    f = tmp_path / "cpuinfo_max_freq"
    f.write_text("3500000\n")  # kHz
    assert macs.max_mhz(f) == 3500.0
    lscpu = "Architecture: x86_64\nCPU max MHz:                     4100.0000\nCPU min MHz: 400.0000\n"
    monkeypatch.setattr(subprocess, "run", lambda *a, **kw: subprocess.CompletedProcess(a, 0, lscpu, ""))
    assert macs.max_mhz(tmp_path / "absent") == 4100.0
    monkeypatch.setattr(subprocess, "run", lambda *a, **kw: subprocess.CompletedProcess(a, 0, "CPU MHz: 2445\n", ""))
    assert macs.max_mhz(tmp_path / "absent") is None  # a VM: no max clock reported


def test_graph_macs_counts_matmul_gemm_conv(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from clipq.app.bench.macs import graph_macs

    w = numpy_helper.from_array(np.zeros((3, 4), np.float32), "w")
    g = numpy_helper.from_array(np.zeros((5, 4), np.float32), "g")
    k = numpy_helper.from_array(np.zeros((2, 1, 3, 3), np.float32), "k")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Gemm", ["y", "g"], ["z"], transB=1),
         helper.make_node("Conv", ["img", "k"], ["c"], pads=[1, 1, 1, 1])], "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3]),
         helper.make_tensor_value_info("img", TensorProto.FLOAT, ["b", 1, 4, 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None), helper.make_tensor_value_info("c", TensorProto.FLOAT, None)],
        [w, g, k])
    path = tmp_path / "t.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    feeds = {"x": np.zeros((2, 3), np.float32), "img": np.zeros((2, 1, 4, 4), np.float32)}
    # MatMul 2x3 @ 3x4: 24; Gemm 2x4 @ (5x4)^T: 40; Conv 2x2x4x4 = 64 outputs x 1x3x3: 576
    assert graph_macs(path, feeds) == 24 + 40 + 576


def test_networks_default_to_those_the_artifacts_hold(tiny_artifacts_copy, tmp_path):
    """An import holds only the CLIP towers: the bench takes those, never exports heads into it."""
    import json

    from clipq.app.bench.models import NETWORKS, _networks

    path = tiny_artifacts_copy / "manifest.json"
    raw = json.loads(path.read_text())
    raw["models"] = {k: v for k, v in raw["models"].items() if k in ("clip_image", "clip_text")}
    path.write_text(json.dumps(raw))
    assert _networks(None, tiny_artifacts_copy) == ["clip_image", "clip_text"]
    assert _networks("vqa", tiny_artifacts_copy) == ["vqa"]
    assert _networks(None, tmp_path / "none") == list(NETWORKS)
