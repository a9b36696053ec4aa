"""The tables of the benchmarks (``bench_results/<target>.json``, written by ``clipq bench``).
Registered in ``TABLES`` on import; ``docs/tables.py`` runs them.
"""

from __future__ import annotations

from typing import Any

from tables_base import md, pct, table

# -- benchmarks (bench_results/<target>.json) ------------------------------------------------------
MODEL_ENGINES = ("pytorch_eager", "optimum_ort", "ort_default", "clipq_fp32", "clipq_opt", "clipq_int8")


@table("bench_models", "models")
def bench_models(models: dict[str, Any]) -> str:
    idx = {(r["network"], r["engine"], r["batch"]): r for r in models["results"]}
    keys = list(dict.fromkeys((r["network"], r["batch"]) for r in models["results"]))
    rows = []
    for net, b in keys:
        got = {e: idx.get((net, e, b)) for e in MODEL_ENGINES}
        cells = [f"{got[e]['p50_ms']:.0f}" if got[e] else "n/a" for e in MODEL_ENGINES]
        i8, ort, pt = got["clipq_int8"], got["ort_default"], got["pytorch_eager"]
        cells.append(f"**{i8['items_per_s'] / ort['items_per_s']:.2f}**" if i8 and ort else "-")
        cells.append(f"{i8['items_per_s'] / pt['items_per_s']:.2f}" if i8 and pt else "-")
        cells.append(f"{i8['cos_vs_fp32']:.5f}" if i8 and "cos_vs_fp32" in i8 else "-")
        rows.append([net, b, *cells])
    header = ["network", "batch", "PyTorch eager", "optimum ORTModel", "plain ORT fp32", "clipq fp32",
              "clipq optimised", "clipq int8", "int8 x ORT fp32", "int8 x PyTorch", "int8 cos vs fp32"]
    return md(header, rows, ["---"] + ["---:"] * (len(header) - 1))


PEER_LABELS = {"pytorch_eager": "PyTorch eager", "torch_bf16": "torch bf16 autocast", "torch_compile": "torch.compile",
               "optimum_ort": "optimum ORTModel", "ort_default": "plain ORT fp32", "ort_optimum_int8": "ORT int8 (optimum)",
               "ov_plain": "OpenVINO (plain ONNX)", "ov_nncf_int8": "OpenVINO + NNCF int8", "clipq_fp32": "clipq fp32",
               "clipq_opt": "clipq optimised", "clipq_int8": "clipq int8 (ORT)", "clipq_default": "clipq default"}


def _machine_line(models: dict[str, Any]) -> str:
    m, c = models["machine"], models["config"]
    flags = ", ".join(f for f, on in (m.get("flags") or {}).items() if on) or "-"
    load = ", ".join(f"{x:.1f}" for x in m.get("load_average", ())) or "?"
    return (f"{m.get('cpu', '?')} [{flags}], {m.get('topology', '')}; {c['threads']} threads per engine, "
            f"{c.get('isolation', 'one process')}; load average at the end {load}.")


@table("bench_models_peers", "models")
def bench_models_peers(models: dict[str, Any]) -> str:
    idx = {(r["network"], r["engine"], r["batch"]): r for r in models["results"]}
    keys = list(dict.fromkeys((r["network"], r["batch"]) for r in models["results"]))
    best = models["best_peer"]
    rows = []
    for net, b in keys:
        ort, d = idx.get((net, "ort_default", b)), idx.get((net, "clipq_default", b))
        top_name = best.get(net, {}).get(str(b))
        top = idx.get((net, top_name, b))
        if not (ort and d and top):
            continue
        tops = f"{d['tops']:.3f} ({d['pct_of_peak']:.1f} % of {d['precision']})" if d.get("pct_of_peak") else "-"
        rows.append([net, b, f"{ort['items_per_s']:.1f}", f"{PEER_LABELS.get(top_name, top_name)} {top['items_per_s']:.1f}",
                     f"`{d.get('choice', '?')}` {d['items_per_s']:.1f}", f"{d['items_per_s'] / ort['items_per_s']:.2f}",
                     f"**{d['items_per_s'] / top['items_per_s']:.2f}**", f"{d['cos_vs_fp32']:.5f}" if "cos_vs_fp32" in d else "-",
                     tops])
    if not rows:
        raise KeyError("clipq_default rows")
    header = ["network", "batch", "plain ORT fp32 items/s", "best peer items/s", "clipq default items/s",
              "default x ORT fp32", "default x best peer", "default cos vs fp32", "default TOPS"]
    return _machine_line(models) + "\n\n" + md(header, rows, ["---", "---:"] + ["---:"] * (len(header) - 2))


@table("bench_models_engines", "models")
def bench_models_engines(models: dict[str, Any]) -> str:
    idx = {(r["network"], r["engine"], r["batch"]): r for r in models["results"]}
    keys = list(dict.fromkeys((r["network"], r["batch"]) for r in models["results"]))
    engines = [e for e in PEER_LABELS if any(r["engine"] == e for r in models["results"])]
    rows = [[net, b, *(f"{idx[(net, e, b)]['items_per_s']:.1f}" if (net, e, b) in idx else "n/a" for e in engines)]
            for net, b in keys]
    return md(["network", "batch", *(PEER_LABELS[e] for e in engines)], rows, ["---", "---:"] + ["---:"] * len(engines))


def _cell(cells: list[dict[str, Any]], **kw: Any) -> dict[str, Any] | None:
    return next((c for c in cells if all(c.get(k) == v for k, v in kw.items())), None)


TRITON_LABELS = {"clip_image": "`clip_image` (tensors in)", "embed_image": "`embed_image` (JPEG bytes in)",
                 "embed_text": "`embed_text` (text in)"}


@table("bench_triton_latency", "triton")
def bench_triton_latency(triton: dict[str, Any]) -> str:
    lat = [c for c in triton["cells"] if c.get("phase") == "latency"]
    if not lat:
        raise KeyError("latency cells")
    rows = []
    for t in triton["setup"]["targets"]:
        i, g, h = (_cell(lat, target=t, mode=m) for m in ("in-process", "grpc", "http"))
        ms = [f"{c['p50_ms']:.1f} ms" if c else "-" for c in (i, g, h)]
        note = "-"
        if t == "embed_image" and g and _cell(lat, target="clip_image", mode="grpc"):
            base = _cell(lat, target="clip_image", mode="grpc")
            over = g["p50_ms"] / base["p50_ms"] - 1
            note = f"{pct(over)} over `clip_image` on gRPC (target 20 %: {'met' if over <= 0.20 else 'not met'})"
        elif g and i:
            over = g["p50_ms"] / i["p50_ms"] - 1
            note = f"**{pct(over)}** (target 5 %: {'met' if over <= 0.05 else 'not met'})" if t == "clip_image" else pct(over)
        rows.append([TRITON_LABELS.get(t, f"`{t}`"), *ms, note])
    return md(["target", "in-process", "Triton gRPC", "Triton HTTP", "gRPC over in-process"], rows)


@table("bench_triton_ceiling", "triton")
def bench_triton_ceiling(triton: dict[str, Any]) -> str:
    ceiling = triton["batching_ceiling"]
    if not ceiling:
        raise KeyError("batching_ceiling")
    sizes = list(ceiling[0]["ms_per_item"])
    rows = [[f"`{r['network']}`", *(f"{r['ms_per_item'][b]:.1f}" for b in sizes),
             f"{max(r['speedup_vs_batch1'].values()):.2f}x"] for r in ceiling]
    return md(["network", *(f"batch {b}" for b in sizes), "best speed-up"], rows)


@table("bench_triton_batching", "triton")
def bench_triton_batching(triton: dict[str, Any]) -> str:
    runs = triton["perf_analyzer"]["runs"]
    conc = triton["setup"]["concurrency"]
    lo, hi = min(conc), max(conc)
    grid = [c for c in triton["cells"] if c.get("phase", "grid") == "grid"]
    rows = []
    for model in ("clip_image", "embed_text"):
        rps = {c: runs.get(f"{model}_c{c}", {}).get("throughput_rps") for c in conc}
        if not any(rps.values()):
            continue
        ratio = rps[hi] / rps[lo] if rps[hi] and rps[lo] else None
        ratio_s = "-" if ratio is None else (f"**{ratio:.2f}x**" if ratio >= 1.3 else f"{ratio:.2f}x")
        srv = _cell(grid, target=model, mode="grpc", concurrency=hi, batching="on")
        batch = f"{srv['server_avg_batch']:.1f}" if srv and srv.get("server_avg_batch") else "-"
        rows.append([f"`{model}`", *(f"{rps[c]:.1f} req/s" if rps[c] else "-" for c in conc), ratio_s, batch])
    if not rows:
        raise KeyError("perf_analyzer runs")
    return md(["model", *(f"c={c}" for c in conc), f"c={hi} / c={lo}", f"average server batch at c={hi}"], rows)


INDEX_LIBS = ("hnswlib", "clipq", "faiss", "usearch")


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


@table("bench_index", "index")
def bench_index(index: dict[str, Any]) -> str:
    c, m, ex = index["config"], index["machine"], index["exact"]
    rounds = ", ".join(f"{v:.0f}" for v in ex.get("qps_1t_rounds", []))
    lines = [
        f"{index['date']}; {m['cpu']}, {m['cores']} cores; " + ", ".join(f"{k} {v}" for k, v in index["versions"].items()),
        f"{c['clusters']} clusters of unit vectors, {c['queries']} held-out queries, M={c['M']}, "
        f"ef_construction={c['ef_construction']}, best of {c['repeats']} runs. Exact numpy (batched matmul): "
        f"{ex['qps_1t']:.0f} QPS on 1 thread, {ex['qps_mt']:.0f} on {c['threads']} at the start; re-measured in each "
        f"ef's round ({rounds} QPS), and 'x exact' divides by the figure of the same round.",
        "",
    ]

    def exact_for(r: dict[str, Any]) -> float:
        return float(r.get("exact_qps_1t_same_window") or ex["qps_1t"])

    order = sorted(index["rows"], key=lambda r: (INDEX_LIBS.index(r["lib"]) if r["lib"] in INDEX_LIBS else 99, r["ef"]))
    lines.append(md(["library", "ef", f"recall@{c['k']}", "QPS 1 thread", "x exact", f"QPS {c['threads']} threads"],
                    [[r["lib"], r["ef"], f"{r['recall']:.4f}", f"{r['qps_1t']:,.0f}", f"{r['qps_1t'] / exact_for(r):,.0f}",
                      f"{r['qps_mt']:,.0f}"] for r in order]))
    lines += ["", md(["library", "build (s)", "resident memory per vector (B)"],
                     [[n, f"{b['build_s']:.1f}", f"{b['bytes_per_vector']:.0f}"] for n, b in index["builds"].items()])]
    pq = index.get("per_query_qps_ef64") or {}
    if pq:
        lines += ["", "One query per call, ef=64, 1 thread: " + ", ".join(f"{k} {v:,.0f} QPS" for k, v in pq.items()) + "."]
    p = index.get("persist") or {}
    if p:
        lines.append(f"clipq save {p['save_s']:.2f} s, load (sha256 verified) {p['load_s']:.2f} s, {p['file_mb']:.0f} MB "
                     f"on disk; ef after load {p['ef_after_load']}.")
    t = index.get("targets") or {}
    rows = []
    if "speedup_at_recall" in t:
        s = t["speedup_at_recall"]
        rows.append([s["target"], f"{s['speedup']:.0f}x at ef={s['ef']} (recall {s['recall']:.4f})", _yes(s["pass"])])
    if "wrapper_overhead_batch" in t:
        w = t["wrapper_overhead_batch"]
        per = ", ".join(f"{ef}: {v:+.0%}" for ef, v in w["per_ef"].items())
        rows.append([f"clipq over raw hnswlib, batched, {w['target']}", f"median {w['median']:+.1%} ({per})", _yes(w["pass"])])
    if "wrapper_overhead_one_query" in t:
        w = t["wrapper_overhead_one_query"]
        rows.append([f"clipq over raw hnswlib, one query per call, {w['target']}", f"{w['overhead']:+.1%}", _yes(w["pass"])])
    if "save_load" in t:
        s = t["save_load"]
        rows.append([f"save and load {s['target']}", f"{s['save_s']:.2f} s / {s['load_s']:.2f} s", _yes(s["pass"])])
    if rows:
        lines += ["", md(["target", "measured", "pass"], rows)]
    return "\n".join(lines)
