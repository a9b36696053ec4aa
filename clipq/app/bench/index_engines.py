"""``clipq bench --target index --large``: every index engine on 1M clustered CLIP-like vectors.

For each engine clipq offers (hnswlib float32, faiss HNSW over 8- and 4-bit scalar codes, faiss
IVF-PQ; :mod:`clipq.runtime.index.engines`) it builds an :class:`~clipq.runtime.index.ImageIndex`
of N x D unit vectors (1M x 512 by default, clustered so that neighbours are close), saves it and
loads it back (so the compressed engines' floats are memory-mapped, as in service), and measures:

- build time (training included) and resident memory per vector after the load (anonymous RSS,
  wrapper included), next to the engine's own bytes per vector (codes + graph) and the disk;
- recall@10 against exact search and queries/s on one thread, for a sweep of ``ef`` (HNSW) or
  ``nprobe`` (IVF) and of the candidates rescored against the floats;
- the best queries/s at recall@10 >= 0.95 and >= 0.99, as a multiple of exact batched numpy on
  every core;
- clipq's wrapper against the raw engine (the library called directly, with the same rescoring
  written inline) at the 0.95 operating point, one query per call.

Every figure comes from one run on one machine; on shared cores compare within a run only.
Writes ``<out>/index_engines.json``, ``.md`` and ``.png``; prints progress as it goes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .index import K, _machine, _versions, best_time, clustered_vectors

ENGINE_SWEEPS: dict[str, list[tuple[int, int]]] = {
    # (ef or nprobe, rescore)
    "hnswlib": [(ef, 0) for ef in (16, 32, 64, 128, 256)],
    "sq8": [(32, 0), (64, 0), (128, 0), (50, 50), (64, 50), (80, 50), (96, 50), (128, 50), (256, 50), (128, 100)],
    "sq4": [(64, 0), (128, 0), (50, 50), (64, 50), (80, 50), (96, 50), (128, 50), (256, 50), (100, 100), (128, 100), (256, 100)],
    # at 1M (4,000 lists: faiss_engine.ivf_lists) few lists reach 0.98; at 10M more are needed (the
    # sweep goes on doubling nprobe below recall 0.99)
    "ivfpq": [(4, 100), (8, 100), (16, 100), (32, 100), (64, 100), (128, 100), (256, 100), (128, 200), (256, 200),
              (512, 200)],
}
TARGET_RECALL, TARGET_SPEEDUP, TARGET_OVERHEAD = 0.95, 100.0, 0.10
TARGET_BYTES, TARGET_QPS = 400, 2000
#: collections whose floats pass this size are drawn and added in blocks (``--index-stream`` forces it)
STREAM_BYTES = 4 << 30
#: rows drawn (and added) per block when streamed
STREAM_BLOCK = 1 << 17


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _rss_anon() -> int:
    """Anonymous resident bytes of this process (mapped files excluded: they are page cache)."""
    gc.collect()
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    import psutil

    return psutil.Process().memory_info().rss


def _total_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class _Raw:
    """The engine under an index, called directly: hnswlib's knn_query, or faiss search + rescoring."""

    def __init__(self, index: Any, k: int) -> None:
        self.g, self.k, self.faiss = index._hnsw, k, None
        if hasattr(self.g, "search_labels"):
            import faiss

            self.faiss = faiss
            faiss.omp_set_num_threads(1)

    def search_one(self, v: Any) -> Any:
        import numpy as np

        g = self.g
        if self.faiss is None:
            return g.knn_query(v, k=self.k, num_threads=1)[0]
        kc = max(self.k, g.rescore)
        if g.kind == "ivfpq":
            params = self.faiss.SearchParametersIVF(nprobe=g.nprobe)
        else:
            params = self.faiss.SearchParametersHNSW(efSearch=max(g.ef, kc))
        _, pos = g.index.search(v, kc, params=params)
        if g.rescore <= 0:
            return pos[0, : self.k]
        p = pos[0]
        sc = np.einsum("cd,d->c", g.vectors.rows(p), v[0])  # as clipq does: no BLAS threads for 50 rows
        return p[np.argsort(-sc)[: self.k]]


def run_engines(args: argparse.Namespace) -> int:
    """Run the engine benchmark; write index_engines.json/.md/.png under ``args.out``."""

    from clipq.runtime.index import ImageIndex
    from clipq.runtime.index.engines import ENGINES, memory_estimate
    from clipq.runtime.metrics import neighbour_recall

    def opt(name: str, default: Any = None) -> Any:
        return getattr(args, name, None) or default

    n = int(opt("n") or (20_000 if opt("quick") else 1_000_000))
    dim = int(opt("dim") or 512)
    nq = int(opt("index_queries") or 500)
    threads = int(opt("threads") or os.cpu_count() or 1)
    M, efc = int(opt("index_M", 16)), int(opt("index_efc") or 100)
    engines = [e.strip() for e in str(opt("index_engines") or ",".join(ENGINES)).split(",") if e.strip()]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_clusters = max(8, n // 100)
    load_start = round(os.getloadavg()[0], 2)
    stream = bool(opt("index_stream")) or n * dim * 4 > STREAM_BYTES
    _log(f"index engines bench: {n} x {dim}, {n_clusters} clusters, {nq} queries, k={K}, M={M}, efc={efc}"
         + (" (streamed: the floats never held in memory at once)" if stream else ""))
    builds: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    wrapper: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    tmp_root = Path(tempfile.mkdtemp(prefix="clipq-engines-", dir=opt("index_tmp")))
    try:  # the collection's file (in memory: 2 GB at 1M) and the saved indexes go with tmp_root
        if stream:
            q, truth_ids, exact_qps, build = _streamed(n, dim, n_clusters, nq, threads, M, efc)
        else:
            q, truth_ids, exact_qps, build = _in_memory(n, dim, n_clusters, nq, threads, M, efc, tmp_root)
        _log(f"exact batched numpy ({threads} threads): {exact_qps:.1f} QPS")
        for engine in engines:
            gc.collect()
            need = memory_estimate(engine, n, dim, M)
            if stream and need > 0.8 * _total_memory():
                skipped[engine] = f"needs about {need / 2**30:.1f} GiB resident, more than this machine's memory"
                _log(f"{engine}: not built: {skipped[engine]}")
                continue
            t0 = time.perf_counter()
            index = build(engine)
            build_s = time.perf_counter() - t0
            _log(f"{engine}: built in {build_s:.1f} s")
            path = tmp_root / engine
            t0 = time.perf_counter()
            index.save(path)
            save_s = time.perf_counter() - t0
            del index
            base = _rss_anon()
            t0 = time.perf_counter()
            index = ImageIndex.load(path, verify=False, exact_threshold=0)
            load_s = time.perf_counter() - t0
            resident = _rss_anon() - base
            files = {p.name: p.stat().st_size for p in path.iterdir() if p.is_file()}
            engine_file = sum(s for name, s in files.items() if name.endswith((".bin", ".faiss")))
            builds[engine] = {
                "build_s": build_s,
                "save_s": save_s,
                "load_s": load_s,
                "resident_bytes_per_vector": resident / n,
                "engine_bytes_per_vector": engine_file / n,
                "disk_bytes_per_vector": sum(files.values()) / n,
                "params": index.engine_params(),
            }
            _log(
                f"{engine}: resident {resident / n:.0f} B/vector after load (engine {engine_file / n:.0f}), "
                f"disk {sum(files.values()) / n:.0f} B/vector, load {load_s:.1f} s"
            )
            def measure(knob: int, rescore: int, index: Any = index, engine: str = engine) -> float:
                if engine == "ivfpq":
                    index.set_search_params(nprobe=knob, rescore=rescore)
                else:
                    index.set_search_params(ef=knob, rescore=rescore)
                found, _ = index.search_ids(q, K, exact=False, num_threads=1)
                rec = float(neighbour_recall(found, truth_ids).mean())
                t = best_time(lambda ix=index: ix.search_ids(q, K, exact=False, num_threads=1), 3)
                row = {
                    "engine": engine,
                    "knob": "nprobe" if engine == "ivfpq" else "ef",
                    "value": knob,
                    "rescore": rescore,
                    "recall": rec,
                    "qps_1t": nq / t,
                    "speedup": nq / t / exact_qps,
                }
                rows.append(row)
                _log(
                    f"{engine:8s} {row['knob']}={knob:<4d} rescore={rescore:<4d} recall@{K} {rec:.4f} "
                    f"{row['qps_1t']:8.0f} QPS 1t ({row['speedup']:.0f}x exact)"
                )
                return rec

            sweep = ENGINE_SWEEPS.get(engine, [])
            best = max((measure(knob, rescore) for knob, rescore in sweep), default=0.0)
            # a larger collection needs a wider search: double the last setting's knob until recall
            # 0.99 or the knob's cap (every IVF list; ef 2,048)
            knob, rescore = sweep[-1] if sweep else (64, 0)
            cap = int(index.engine_params().get("nlist") or 0) if engine == "ivfpq" else 2048
            while best < 0.99 and knob * 2 <= cap:
                knob *= 2
                best = max(best, measure(knob, rescore))
            point = _best(rows, engine, TARGET_RECALL) or max(
                (r for r in rows if r["engine"] == engine), key=lambda r: r["recall"]
            )
            wrapper[engine] = _overhead(index, point, q)
            _log(
                f"{engine}: one query per call at {point['knob']}={point['value']}/rescore {point['rescore']}: "
                f"clipq {wrapper[engine]['clipq_qps']:.0f} vs raw {wrapper[engine]['raw_qps']:.0f} QPS "
                f"(overhead {wrapper[engine]['overhead']:.1%})"
            )
            del index
            shutil.rmtree(path, ignore_errors=True)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)

    result = {
        "target": "index-engines",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_average": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
        "machine": _machine(),
        "versions": _versions(),
        "config": {
            "n": n,
            "dim": dim,
            "clusters": n_clusters,
            "queries": nq,
            "k": K,
            "M": M,
            "ef_construction": efc,
            "threads": threads,
            "space": "inner product on unit vectors",
            "streamed": stream,
        },
        "exact_qps": exact_qps,
        "builds": builds,
        "rows": rows,
        "wrapper": wrapper,
        "skipped": skipped,
    }
    result["summary"] = _summary(result)
    (out_dir / "index_engines.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "index_engines.md").write_text(to_markdown(result))
    _plot(result, out_dir / "index_engines.png")
    _log(f"wrote {out_dir / 'index_engines.json'}, index_engines.md, index_engines.png")
    return 0


def _in_memory(n: int, dim: int, n_clusters: int, nq: int, threads: int, M: int, efc: int, tmp_root: Path) -> Any:
    """The collection drawn at once, exact search timed in one pass, engines built from the array."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    from clipq.runtime.index import ImageIndex, exact_topk

    data = clustered_vectors(n + nq, dim, n_clusters=n_clusters, spread=1.0, seed=0)
    x, q = data[:n], data[n:].copy()
    ids = [f"v{i}" for i in range(n)]
    with threadpool_limits(limits=threads):
        t0 = time.perf_counter()  # one timed pass: at 1M it takes a minute on 2 cores
        truth, _ = exact_topk(q, x, K, space="ip")
        exact_s = time.perf_counter() - t0
    truth_ids = [[ids[j] for j in row] for row in truth.tolist()]
    # the collection goes to disk and comes back memory-mapped: page cache, not this process's
    # memory, so that a build holds one float copy (the engine's) rather than three (a 1M run was
    # OOM-killed on a shared 24 GB machine with them)
    np.save(tmp_root / "x.npy", x)
    del data, x
    x = np.load(tmp_root / "x.npy", mmap_mode="r")

    def build(engine: str) -> Any:
        # space "ip" on unit vectors: the cosine, without the normalised copy "cosine" makes
        return ImageIndex.from_embeddings(
            x, ids, engine=engine, space="ip", M=M, ef_construction=efc, num_threads=threads, exact_threshold=0
        )

    return q, truth_ids, nq / exact_s, build


def clustered_blocks(n: int, dim: int, *, n_clusters: int, seed: int, step: int | None = None) -> tuple[Any, Any]:
    """Queries and a re-playable generator of ``n`` clustered unit vectors in blocks (see clustered_vectors).

    Returns:
        (the 500-query draw function ``queries(nq)``, ``blocks()`` yielding (start, float32 [B, dim])):
        both draw around the same centres; ``blocks()`` gives the same rows each time it is called.
    """
    import numpy as np

    from clipq.runtime.vectors import l2_normalize

    step = step or STREAM_BLOCK
    centres = np.random.default_rng(seed).standard_normal((n_clusters, dim)).astype(np.float32)

    def draw(rng: Any, m: int) -> Any:
        return l2_normalize(centres[rng.integers(0, n_clusters, m)] + rng.standard_normal((m, dim), np.float32))

    def queries(nq: int) -> Any:
        return draw(np.random.default_rng(seed + 1), nq)

    def blocks() -> Any:
        rng = np.random.default_rng(seed + 2)
        for s in range(0, n, step):
            yield s, draw(rng, min(step, n - s))

    return queries, blocks


def _streamed(n: int, dim: int, n_clusters: int, nq: int, threads: int, M: int, efc: int) -> Any:
    """A collection larger than memory: drawn block by block twice (exact search, then each build).

    Exact search is one pass of matrix products and a running top-k over the blocks
    (:class:`~clipq.runtime.index.RunningTopK`), timed without the drawing; each engine is built by
    adding the blocks in turn, as ``clipq index build --from-embeddings`` adds shards: the engine's
    floats spill to mapped segments on disk (:mod:`clipq.runtime.index.vectorstore`).
    """
    from threadpoolctl import threadpool_limits

    from clipq.runtime.index import ImageIndex, RunningTopK

    queries, blocks = clustered_blocks(n, dim, n_clusters=n_clusters, seed=0)
    q = queries(nq)
    run = RunningTopK(q, K, space="ip")
    exact_s, t_log = 0.0, time.perf_counter()
    with threadpool_limits(limits=threads):
        for s, block in blocks():
            t0 = time.perf_counter()
            run.update(block)
            exact_s += time.perf_counter() - t0
            if time.perf_counter() - t_log > 30:
                _log(f"exact search: {s + len(block):,} of {n:,} rows scored")
                t_log = time.perf_counter()
    truth_ids = [[f"v{j}" for j in row] for row in run.result()[0].tolist()]

    def build(engine: str) -> Any:
        index = ImageIndex(dim, engine=engine, space="ip", M=M, ef_construction=efc, num_threads=threads,
                           exact_threshold=0, capacity=n)
        t_log = time.perf_counter()
        for s, block in blocks():
            index.add(block, [f"v{i}" for i in range(s, s + len(block))])
            if time.perf_counter() - t_log > 30:
                _log(f"{engine}: {s + len(block):,} of {n:,} vectors added")
                t_log = time.perf_counter()
        return index

    return q, truth_ids, nq / exact_s, build


def _best(rows: list[dict[str, Any]], engine: str, recall: float) -> dict[str, Any] | None:
    ok = [r for r in rows if r["engine"] == engine and r["recall"] >= recall]
    return max(ok, key=lambda r: r["qps_1t"]) if ok else None


def _overhead(index: Any, point: dict[str, Any], q: Any) -> dict[str, Any]:
    """One query per call, clipq's ``search`` against the raw engine, interleaved, best of 3."""
    if point["knob"] == "nprobe":
        index.set_search_params(nprobe=point["value"], rescore=point["rescore"])
    else:
        index.set_search_params(ef=point["value"], rescore=point["rescore"])
    raw = _Raw(index, K)
    qs = [q[i : i + 1] for i in range(q.shape[0])]
    best = {"clipq": float("inf"), "raw": float("inf")}
    for _ in range(3):
        best["raw"] = min(best["raw"], best_time(lambda: [raw.search_one(v) for v in qs], 1))
        best["clipq"] = min(
            best["clipq"], best_time(lambda: [index.search(v[0], K, exact=False) for v in qs], 1)
        )
    clipq_qps, raw_qps = len(qs) / best["clipq"], len(qs) / best["raw"]
    return {
        "clipq_qps": clipq_qps,
        "raw_qps": raw_qps,
        "overhead": 1.0 - clipq_qps / raw_qps,
        "at": {k: point[k] for k in ("knob", "value", "rescore")},
    }


def _summary(res: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for engine, b in res["builds"].items():
        at95, at99 = _best(res["rows"], engine, 0.95), _best(res["rows"], engine, 0.99)
        w = res["wrapper"].get(engine, {})
        out[engine] = {
            "qps_at_0.95": at95 and at95["qps_1t"],
            "speedup_at_0.95": at95 and at95["speedup"],
            "at_0.95": at95 and {k: at95[k] for k in ("knob", "value", "rescore", "recall")},
            "qps_at_0.99": at99 and at99["qps_1t"],
            "speedup_at_0.99": at99 and at99["speedup"],
            "at_0.99": at99 and {k: at99[k] for k in ("knob", "value", "rescore", "recall")},
            "target_speedup": bool(at95 and at95["speedup"] >= TARGET_SPEEDUP),
            "target_overhead": bool(w and w["overhead"] <= TARGET_OVERHEAD),
            "target_memory": bool(
                at95 and b["engine_bytes_per_vector"] <= TARGET_BYTES and at95["qps_1t"] >= TARGET_QPS
            ),
        }
    return out


def to_markdown(res: dict[str, Any]) -> str:
    c, m = res["config"], res["machine"]
    lines = [
        f"# Index engines: {c['n']:,} x {c['dim']} clustered unit vectors, {c['queries']} queries, k = {c['k']}",
        "",
        f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores; {res['date']}; 1-minute load average "
        f"{res.get('load_average', {}).get('start', '?')} at the start, {res.get('load_average', {}).get('end', '?')} "
        "at the end (above 0 while it runs: its own threads; compare within a run on a shared machine). "
        f"HNSW M {c['M']}, ef_construction {c['ef_construction']}, {c['threads']} build threads; "
        f"queries on one thread. Exact batched numpy on {c['threads']} threads: {res['exact_qps']:.1f} queries/s.",
        "",
        "| engine | build s | resident B/vector (clipq, after load) | engine B/vector (codes + graph) | disk B/vector "
        "| QPS at recall 0.95 (x exact) | setting | QPS at recall 0.99 (x exact) | setting | clipq vs raw, 1 query/call |",
        "|---|---:|---:|---:|---:|---:|---|---:|---|---|",
    ]
    for engine, b in res["builds"].items():
        s, w = res["summary"][engine], res["wrapper"].get(engine, {})

        def fmt(qps: Any, sp: Any) -> str:
            return "not reached" if qps is None else f"{qps:,.0f} ({sp:,.0f}x)"

        def at(a: Any) -> str:
            return (
                ""
                if not a
                else f"{a['knob']} {a['value']}, rescore {a['rescore']} (recall {a['recall']:.3f})"
            )

        lines.append(
            f"| {engine} | {b['build_s']:.0f} | {b['resident_bytes_per_vector']:.0f} | {b['engine_bytes_per_vector']:.0f} "
            f"| {b['disk_bytes_per_vector']:.0f} | {fmt(s['qps_at_0.95'], s['speedup_at_0.95'])} | {at(s['at_0.95'])} "
            f"| {fmt(s['qps_at_0.99'], s['speedup_at_0.99'])} | {at(s['at_0.99'])} "
            f"| {w.get('clipq_qps', 0):,.0f} vs {w.get('raw_qps', 0):,.0f} ({w.get('overhead', 0):+.1%}) |"
        )
    for engine, why in res.get("skipped", {}).items():
        lines.append(f"| {engine} | not built: {why} |" + " |" * 9)
    lines += [
        "",
        "## Every setting",
        "",
        "| engine | knob | rescore | recall@10 | QPS (1 thread) | x exact |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['engine']} | {r['knob']} {r['value']} | {r['rescore']} | {r['recall']:.4f} "
            f"| {r['qps_1t']:,.0f} | {r['speedup']:,.0f} |"
        )
    lines += [
        "",
        "## Targets",
        "",
        "| engine | >= 100x exact at 0.95 | wrapper within 10 % | <= 400 B/vector at 0.95, >= 2,000 QPS |",
        "|---|---|---|---|",
    ]
    for engine, s in res["summary"].items():
        lines.append(
            f"| {engine} | {_yes(s['target_speedup'])} | {_yes(s['target_overhead'])} | {_yes(s['target_memory'])} |"
        )
    return "\n".join(lines) + "\n"


def _yes(ok: bool) -> str:
    return "yes" if ok else "no"


def _plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for engine in res["builds"]:
        pts = sorted((r["recall"], r["qps_1t"]) for r in res["rows"] if r["engine"] == engine)
        b = res["builds"][engine]
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            "o-",
            label=f"{engine} ({b['engine_bytes_per_vector']:.0f} B/vector in memory)",
        )
    ax.axhline(res["exact_qps"] * TARGET_SPEEDUP, color="grey", ls="--", lw=1, label="100x exact numpy")
    ax.axvline(TARGET_RECALL, color="grey", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("recall@10")
    ax.set_ylabel("queries/s, one thread")
    c = res["config"]
    ax.set_title(f"{c['n']:,} x {c['dim']}: every setting of every engine")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
