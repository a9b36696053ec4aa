"""Milvus as clipq's store, measured: bulk load against raw pymilvus, top-10 against the embedded index.

``python -m clipq.app.bench.milvus --n 100000 --out runs/bench/milvus`` (Milvus Lite in a temporary
folder; ``--store-dir`` to keep it elsewhere):

- **bulk load**: the same vectors (clustered, 512-d, unit) written as a ``clipq embed`` output and
  loaded with clipq's resumable loader (reading the shards, checking them, recording progress), and
  inserted by pymilvus itself from memory in the same batches into an identical collection;
  alternated raw, clipq, clipq, raw so that a drift of the shared machine hits both alike;
- **top-10**: Milvus' answers against the embedded hnswlib index (``ImageIndex``) and both against
  exact numpy search, at two ``ef``;
- **batching**: the queries in one ``search_batch`` call against one call per query.

Writes ``milvus.json``, ``milvus.md`` (tables) and ``milvus.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

K = 10


def write_embed_dir(root: Path, x: Any, shard_rows: int, model_id: str) -> None:
    """``x`` as a finished ``clipq embed`` output (the layout ``clipq.app.batch_embed`` writes)."""
    import numpy as np

    from clipq.app.batch_embed import SHARD_DIR, SUMMARY
    from clipq.runtime.manifest import sha256_file

    d = root / SHARD_DIR
    d.mkdir(parents=True, exist_ok=True)
    shards = 0
    for n, s in enumerate(range(0, x.shape[0], shard_rows)):
        stem = d / f"shard-{n:05d}"
        rows = range(s, min(s + shard_rows, x.shape[0]))
        np.save(f"{stem}.npy", x[s : s + shard_rows], allow_pickle=False)
        Path(f"{stem}.jsonl").write_text(
            "".join(json.dumps({"id": f"img-{i}", "path": f"/photos/{i}.jpg"}) + "\n" for i in rows)
        )
        marker = {
            "shard": n,
            "count": len(rows),
            "model_id": model_id,
            "dim": int(x.shape[1]),
            "sha256": {sfx: sha256_file(Path(f"{stem}{sfx}")) for sfx in (".npy", ".jsonl")},
            "skipped": [],
        }
        Path(f"{stem}.json").write_text(json.dumps(marker))
        shards += 1
    (root / SUMMARY).write_text(
        json.dumps(
            {"shards": shards, "embedded": int(x.shape[0]), "model_id": model_id, "dim": int(x.shape[1])}
        )
    )


def raw_insert(client: Any, name: str, x: Any, batch: int) -> float:
    """Seconds pymilvus takes to insert ``x`` from memory in batches (clipq's row layout)."""
    t0 = time.perf_counter()
    for s in range(0, x.shape[0], batch):
        rows = [
            {"id": f"img-{i}", "seq": i, "vector": x[i], "meta": {"path": f"/photos/{i}.jpg"}}
            for i in range(s, min(s + batch, x.shape[0]))
        ]
        client.insert(name, rows)
    return time.perf_counter() - t0


def run(
    n: int,
    dim: int,
    nq: int,
    batch: int,
    out: Path,
    store_dir: Path,
    M: int,
    efc: int,
    load_n: int = 20_000,
    rounds: int = 3,
) -> dict[str, Any]:
    import numpy as np

    from clipq.app.bench.index import clustered_vectors
    from clipq.app.store_cli import embedding_shards
    from clipq.runtime.index import ImageIndex, MilvusIndex, exact_topk
    from clipq.runtime.index.milvus_load import bulk_load

    data = clustered_vectors(n + nq, dim, n_clusters=max(8, n // 100), spread=1.0, seed=0)
    x, q = data[:n], data[n:]
    ids = [f"img-{i}" for i in range(n)]
    db = store_dir / "bench.db"
    load_n = min(load_n, n)
    small, full = store_dir / "emb_small", store_dir / "emb"
    write_embed_dir(small, x[:load_n], 10_000, "bench-model")
    write_embed_dir(full, x, 10_000, "bench-model")
    counter = iter(range(1_000_000))

    def load(who: str, emb: Path, rows: Any) -> tuple[dict[str, Any], Any]:
        """One timed load into a fresh collection; then (untimed) Milvus' index build."""
        store = MilvusIndex.open(
            f"milvus-lite://{db}/load_{next(counter)}",
            create=True,
            dim=dim,
            M=M,
            ef_construction=efc,
            batch_rows=batch,
        )
        real_insert, in_insert = store._client.insert, [0.0]

        def timed_insert(*args: Any, **kwargs: Any) -> Any:  # the real call, timed
            t = time.perf_counter()
            try:
                return real_insert(*args, **kwargs)
            finally:
                in_insert[0] += time.perf_counter() - t

        store._client.insert = timed_insert
        if who == "pymilvus":
            seconds = raw_insert(store._client, store.collection, rows, batch)
        else:
            summary, counts, readers = embedding_shards(str(emb))
            seconds = bulk_load(store, readers, counts, summary["key"], progress=False).seconds
        store._client.insert = real_insert
        count = len(store)
        waited = store.wait_indexed()  # the index Milvus builds must not run into the next load's time
        rec = {
            "who": who,
            "rows": count,
            "seconds": seconds,
            "rows_per_s": count / seconds,
            "outside_insert_s": seconds - in_insert[0],
            "index_wait_s": waited,
        }
        print(
            f"load: {who:8s} {count:7d} rows {count / seconds:8,.0f} vectors/s ({seconds:.1f} s, "
            f"{seconds - in_insert[0]:.2f} s outside pymilvus' insert); index built {waited:.1f} s later",
            flush=True,
        )
        return rec, store

    def drop(store: Any) -> None:
        try:
            store._client.drop_collection(store.collection)
        except Exception as e:  # noqa: BLE001 - Milvus Lite 3.2 sometimes trips on its own index files
            print(f"  (dropping {store.collection} failed: {e}; left in {db})")

    # rates: short loads alternated (raw, clipq / clipq, raw ...) so that the shared machine's drift
    # hits both alike; the collections the loader creates itself, raw pymilvus the same schema
    loads: list[dict[str, Any]] = []
    for r in range(rounds):
        for who in ("pymilvus", "clipq") if r % 2 == 0 else ("clipq", "pymilvus"):
            rec, store = load(who, small, x[:load_n])
            loads.append(rec)
            drop(store)
    full_load, index = load("clipq", full, x)
    index_wait = full_load["index_wait_s"]
    raw = [r["rows_per_s"] for r in loads if r["who"] == "pymilvus"]
    ours = [r["rows_per_s"] for r in loads if r["who"] == "clipq"]

    truth, _ = exact_topk(q, x, K)
    t0 = time.perf_counter()
    local = ImageIndex.from_embeddings(x, ids, M=M, ef_construction=efc, exact_threshold=0)
    local_build = time.perf_counter() - t0
    rows: list[dict[str, Any]] = []
    for ef in (64, 128):
        local.ef = index.ef = ef
        mine, _ = index.search_ids(q, K)  # warm
        t0 = time.perf_counter()
        mine, _ = index.search_ids(q, K)
        batched = time.perf_counter() - t0
        emb_ids, _ = local.search_ids(q, K, exact=False)
        t0 = time.perf_counter()
        for v in q:
            index.search(v, K)
        single = time.perf_counter() - t0
        true_ids = [[ids[j] for j in row] for row in truth.tolist()]
        rows.append(
            {
                "ef": ef,
                "same_top10_as_hnswlib": float(
                    np.mean([len(set(a) & set(b)) for a, b in zip(mine, emb_ids)])
                ),
                "milvus_recall": float(np.mean([len(set(a) & set(b)) / K for a, b in zip(mine, true_ids)])),
                "hnswlib_recall": float(
                    np.mean([len(set(a) & set(b)) / K for a, b in zip(emb_ids, true_ids)])
                ),
                "batched_qps": nq / batched,
                "single_qps": nq / single,
            }
        )
        print(
            f"ef {ef}: same top-10 as hnswlib {rows[-1]['same_top10_as_hnswlib']:.2f}/10, recall Milvus "
            f"{rows[-1]['milvus_recall']:.3f} hnswlib {rows[-1]['hnswlib_recall']:.3f}; "
            f"{nq} queries in one call {nq / batched:,.0f} q/s, one a call {nq / single:,.0f} q/s",
            flush=True,
        )
    disk = sum(f.stat().st_size for f in db.rglob("*") if f.is_file()) if db.exists() else 0
    index.close()
    cpu = _cpu()
    result = {
        "machine": {
            "cpu": cpu,
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "note": "shared machine: other jobs ran alongside",
        },
        "config": {
            "n": n,
            "dim": dim,
            "queries": nq,
            "k": K,
            "batch_rows": batch,
            "M": M,
            "ef_construction": efc,
        },
        "versions": _versions(),
        "load": loads,
        "full_load": full_load,
        "load_ratio": float(np.mean(ours) / np.mean(raw)),
        "search": rows,
        "hnswlib_build_s": local_build,
        "milvus_index_wait_s": index_wait,
        "milvus_lite_disk_bytes": disk,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "milvus.json").write_text(json.dumps(result, indent=2))
    (out / "milvus.md").write_text(_markdown(result))
    _plot(result, out / "milvus.png")
    print(
        f"bulk load: clipq {np.mean(ours):,.0f} vs pymilvus {np.mean(raw):,.0f} vectors/s = "
        f"{result['load_ratio']:.0%}; wrote {out / 'milvus.json'}"
    )
    return result


def _markdown(r: dict[str, Any]) -> str:
    c = r["config"]
    lines = [
        f"Milvus Lite, {c['n']:,} x {c['dim']} clustered unit vectors, batches of {c['batch_rows']:,}, "
        f"HNSW M {c['M']} / efConstruction {c['ef_construction']}; {r['machine']['cpu']}, "
        f"{r['machine']['cores']} cores, shared.",
        "",
        "| load (run order) | rows | vectors/s | seconds | of which outside pymilvus' insert |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {x['who']} | {x['rows']:,} | {x['rows_per_s']:,.0f} | {x['seconds']:.1f} | {x['outside_insert_s']:.2f} |"
        for x in [*r["load"], r["full_load"]]
    ]
    lines += [
        "",
        f"clipq's loader at {r['load_ratio']:.0%} of pymilvus' own insert rate.",
        "",
        "| ef | same top-10 as hnswlib | recall@10 Milvus | recall@10 hnswlib | "
        f"{c['queries']} queries in one call (q/s) | one query a call (q/s) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {s['ef']} | {s['same_top10_as_hnswlib']:.2f} / 10 | {s['milvus_recall']:.3f} | "
        f"{s['hnswlib_recall']:.3f} | {s['batched_qps']:,.0f} | {s['single_qps']:,.0f} |"
        for s in r["search"]
    ]
    return "\n".join(lines) + "\n"


def _plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    labels = [f"{x['who']} #{n}" for n, x in enumerate(r["load"])]
    a.bar(
        labels,
        [x["rows_per_s"] for x in r["load"]],
        color=["#888" if x["who"] == "pymilvus" else "#2a7" for x in r["load"]],
    )
    a.set_ylabel("vectors/s")
    a.set_title("bulk load (run order)")
    a.tick_params(axis="x", labelsize=8, labelrotation=30)
    efs = [str(s["ef"]) for s in r["search"]]
    width = 0.38
    pos = range(len(efs))
    b.bar([p - width / 2 for p in pos], [s["batched_qps"] for s in r["search"]], width, label="one call")
    b.bar(
        [p + width / 2 for p in pos], [s["single_qps"] for s in r["search"]], width, label="a call per query"
    )
    b.set_xticks(list(pos), [f"ef {e}" for e in efs])
    b.set_yscale("log")
    b.set_ylabel("queries/s")
    b.set_title(f"{r['config']['queries']} queries")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("pymilvus", "milvus-lite", "hnswlib", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "missing"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="vectors (default %(default)s)")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--batch", type=int, default=5000, help="rows per insert call")
    p.add_argument(
        "--load-rows", type=int, default=20_000, help="rows per timed load round (default %(default)s)"
    )
    p.add_argument("--rounds", type=int, default=3, help="alternated load rounds (default %(default)s)")
    p.add_argument("--M", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=100)
    p.add_argument("--out", default="runs/bench/milvus")
    p.add_argument(
        "--store-dir", default=None, help="where the Milvus Lite file goes (default: a temp folder)"
    )
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="clipq-milvus-") as tmp:
        store = Path(args.store_dir) if args.store_dir else Path(tmp)
        store.mkdir(parents=True, exist_ok=True)
        run(
            args.n,
            args.dim,
            args.queries,
            args.batch,
            Path(args.out),
            store,
            args.M,
            args.ef_construction,
            args.load_rows,
            args.rounds,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
