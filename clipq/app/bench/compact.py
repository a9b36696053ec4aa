"""Compact embeddings measured (issue 30): int8 / binary recall@10 against float, and R@K at fewer dimensions.

``python -m clipq.app.bench.compact --artifacts DEMO/artifacts --data DEMO/data [--out DIR]``

On a trained model and its world (the demo's):

1. **Codes** — every image of the world is embedded with the runtime's encoder (what ``clipq index``
   stores). The test split's images and first captions are the queries, the train + val images the
   collection. The truth is exact float top-``k``; each code is measured at the same ``k``: int8 codes
   alone (float queries against decoded codes), int8 with the top 50 rescored on the float vectors,
   binary codes alone (Hamming), binary with the top 100 / 200 rescored.
2. **Dimensions** — text -> image Recall@1/5/10 on the test split as ``clipq eval`` counts it
   (:func:`clipq.runtime.metrics.recall_at_k`, the same prompt templates), float against a projection to
   ``--dimensions`` (default: half the model's) fitted on the collection searched (the test images, as
   ``clipq index project`` fits it on an index of them) and, out of sample, on the train images.

A clustered synthetic set (``--synthetic N``, 512-d) adds the codes' recall where CLIP's 512-d
embeddings are not at hand. Writes ``compact.json`` and ``compact.png`` (recall by bytes a vector).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("clipq.bench.compact")

K = 10
#: rescored candidates measured for each code
INT8_CANDIDATES = (50,)
BINARY_CANDIDATES = (100, 200)


def _top(q: np.ndarray, base: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q @ base.T), axis=1, kind="stable")[:, :k]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth)]))


def code_recall(base: np.ndarray, queries: np.ndarray, k: int = K) -> list[dict[str, Any]]:
    """Recall@k of every code against exact float search, same k; bytes a vector of each."""
    from clipq.runtime.compact import Int8Codec, binary_search, hamming_topk, int8_search, pack_binary

    d = base.shape[1]
    truth = _top(queries, base, k)
    codec = Int8Codec.fit(base)
    codes8, bits = codec.encode(base), pack_binary(base)
    rows: list[dict[str, Any]] = [{"code": "float32", "bytes": 4 * d, "recall": 1.0}]
    rows.append({"code": "int8", "bytes": d, "recall": _recall(int8_search(queries, codes8, codec, k)[1], truth)})
    for c in INT8_CANDIDATES:
        got = int8_search(queries, codes8, codec, k, vectors=base, candidates=c)[1]
        rows.append({"code": f"int8 + rescore {c}", "bytes": d, "recall": _recall(got, truth)})
    rows.append({"code": "binary", "bytes": bits.shape[1],
                 "recall": _recall(hamming_topk(pack_binary(queries), bits, k)[1], truth)})
    for c in BINARY_CANDIDATES:
        got = binary_search(queries, bits, base, k, candidates=c)[1]
        rows.append({"code": f"binary + rescore {c}", "bytes": bits.shape[1], "recall": _recall(got, truth)})
    return rows


def _world(data: str, encoder: Any) -> dict[str, Any]:
    """Image embeddings of every split, and the test split's ids and captions."""
    from tqdm.auto import tqdm

    from clipq.readers import World

    world = World(Path(data))
    out: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        s = world.split(split)
        paths = [str(p) for p in s.image_paths]
        vecs = [encoder.encode_images(paths[i : i + 256], batch_size=256)
                for i in tqdm(range(0, len(paths), 256), desc=f"embedding {split}", unit="batch")]
        out[split] = np.concatenate(vecs).astype(np.float32)
        if split == "test":
            caps: dict[str, list[str]] = {}
            for c in s.captions:
                caps.setdefault(c.image, []).append(c.text)
            out["test_captions"] = [caps.get(i, []) for i in s.image_ids]
    return out


def dimension_recall(encoder: Any, emb: dict[str, Any], dims: int) -> dict[str, Any]:
    """Text -> image R@1/5/10 (``clipq eval``'s count) at full dimension and through projections to ``dims``."""
    from clipq.runtime.compact import Projection
    from clipq.runtime.metrics import recall_at_k
    from clipq.runtime.templates import DEFAULT_TEMPLATES, SINGLE_TEMPLATE, embed_texts

    img = emb["test"]
    keep = [i for i, c in enumerate(emb["test_captions"]) if c]
    gt = np.array(keep)
    first = [emb["test_captions"][i][0] for i in keep]
    queries = {"single": embed_texts(encoder, first, (SINGLE_TEMPLATE,)),
               "ensemble": embed_texts(encoder, first, DEFAULT_TEMPLATES)}
    fits = {"float": None, "projection fitted on the test images": Projection.fit(img, dims),
            "projection fitted on the train images": Projection.fit(emb["train"], dims)}
    out: dict[str, Any] = {"dimensions": dims, "from": int(img.shape[1]), "queries": len(keep), "rows": {}}
    for name, proj in fits.items():
        row: dict[str, Any] = {}
        for form, q in queries.items():
            qq, ii = (q, img) if proj is None else (proj.apply(q), proj.apply(img))  # as ImageSearch does
            row[form] = {f"R@{k}": v for k, v in recall_at_k(qq @ ii.T, gt).items()}
        if proj is not None:
            row["kept"] = proj.kept
        out["rows"][name] = row
    return out


def synthetic(n: int, dim: int = 512, queries: int = 500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors in two levels of clusters around a shared direction (CLIP-like: neighbours are close)."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=dim)
    shared /= np.linalg.norm(shared)
    top = rng.normal(size=(100, dim)) / np.sqrt(dim) + 0.6 * shared
    sub = top[rng.integers(0, 100, 5000)] + 0.5 * rng.normal(size=(5000, dim)) / np.sqrt(dim)
    x = sub[rng.integers(0, 5000, n + queries)] + 0.3 * rng.normal(size=(n + queries, dim)) / np.sqrt(dim)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return x[:n], x[n:]


def run(artifacts: str | None, data: str | None, *, dims: int | None = None, n_synthetic: int = 0,
        out: str | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {"machine": f"{platform.processor() or platform.machine()} ({_cpu()})", "k": K}
    if artifacts and data:
        import clipq.runtime as rt

        backend = rt.connect(artifacts)
        try:
            enc = rt.ClipEncoder(backend)
            t0 = time.perf_counter()
            emb = _world(data, enc)
            res["embed_s"] = round(time.perf_counter() - t0, 1)
            base = np.concatenate([emb["train"], emb["val"]])
            from clipq.runtime.templates import SINGLE_TEMPLATE, embed_texts

            first = [c[0] for c in emb["test_captions"] if c]
            res["demo"] = {
                "collection": int(base.shape[0]), "dim": int(base.shape[1]),
                "image_queries": code_recall(base, emb["test"]),
                "text_queries": code_recall(base, embed_texts(enc, first, (SINGLE_TEMPLATE,))),
            }
            res["dimensions"] = dimension_recall(enc, emb, dims or enc.dim // 2)
        finally:
            backend.close()
    if n_synthetic:
        base, q = synthetic(n_synthetic)
        res["synthetic"] = {"collection": n_synthetic, "dim": 512, "queries": int(q.shape[0]),
                            "rows": code_recall(base, q)}
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "compact.json").write_text(json.dumps(res, indent=2) + "\n")
        _plot(res, Path(out) / "compact.png")
    return res


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [(f"demo, image queries ({res['demo']['dim']}-d)", res["demo"]["image_queries"])] if "demo" in res else []
    if "demo" in res:
        sets.append((f"demo, text queries ({res['demo']['dim']}-d)", res["demo"]["text_queries"]))
    if "synthetic" in res:
        sets.append(("synthetic clustered (512-d)", res["synthetic"]["rows"]))
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 3.6), squeeze=False)
    for ax, (title, rows) in zip(axes[0], sets):
        names = [r["code"] for r in rows]
        ax.barh(names, [100 * r["recall"] for r in rows], color="#4a7")
        for y, r in enumerate(rows):
            ax.text(1, y, f"{100 * r['recall']:.1f} %  ({r['bytes']} B)", va="center", fontsize=8)
        ax.set_xlim(0, 100)
        ax.invert_yaxis()
        ax.set_xlabel(f"recall@{res['k']} against float, same k")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(res: dict[str, Any]) -> str:
    lines: list[str] = []
    sets = []
    if "demo" in res:
        sets += [("demo image queries", res["demo"]["image_queries"]), ("demo text queries", res["demo"]["text_queries"])]
    if "synthetic" in res:
        sets.append(("synthetic 512-d", res["synthetic"]["rows"]))
    if sets:
        lines += ["| code | bytes a vector | " + " | ".join(n for n, _ in sets) + " |",
                  "|---|---|" + "---|" * len(sets)]
        for i, r in enumerate(sets[0][1]):
            byte_cells = "/".join(dict.fromkeys(str(s[1][i]["bytes"]) for s in sets))
            lines.append(f"| {r['code']} | {byte_cells} | " + " | ".join(f"{100 * s[1][i]['recall']:.1f}" for s in sets)
                         + " |")
    if "dimensions" in res:
        d = res["dimensions"]
        lines += ["", f"Text -> image on the test split ({d['queries']} queries), {d['from']} -> {d['dimensions']} "
                  "dimensions:", "| embeddings | single R@1 / R@5 / R@10 | ensemble R@1 / R@5 / R@10 |", "|---|---|---|"]
        for name, row in d["rows"].items():
            cells = [" / ".join(f"{row[f][f'R@{k}']:.1f}" for k in (1, 5, 10)) for f in ("single", "ensemble")]
            lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", help="a trained model's artifact directory (the demo's)")
    p.add_argument("--data", help="its world (the demo's data/)")
    p.add_argument("--dimensions", type=int, default=None, help="projected dimension (default: half the model's)")
    p.add_argument("--synthetic", type=int, default=0, metavar="N", help="also a clustered synthetic set of N x 512")
    p.add_argument("--out", default=None, help="write compact.json and compact.png here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = run(args.artifacts, args.data, dims=args.dimensions, n_synthetic=args.synthetic, out=args.out)
    print(f"machine: {res['machine']}")
    print(format_table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
