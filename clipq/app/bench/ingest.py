"""``clipq bench --target ingest``: phone photos to an index, in process, against the machine's limit.

On a folder of photos (by default :func:`clipq.app.bench.photos.phone_photos`: 24 phone-shaped
12 MP JPEGs and five other forms; any folder with ``--ingest-photos``) it measures, in one run:

- per-stage times on one thread, with decoding at the size the model needs (draft) and at full
  resolution: read, decode, resize + crop, normalise (ms per image);
- the model alone (the artifact's CPU default, batch 8): ms per image and core-ms per image;
- end to end in process (``ImageIndex.from_images``, what ``clipq index build`` runs), draft on and
  off, after start-up;
- the machine's limit for this pipeline: cores / (decode core-ms + model core-ms per image);
- through Triton (``--ingest-paths`` ``triton``): a real tritonserver on 127.0.0.1 serving what
  ``clipq serve`` renders, a thin client sending each photo's JPEG bytes to ``embed_image`` at
  concurrency 1, 2, 4 and 8, with Triton's own per-stage statistics (:mod:`.ingest_paths`);
- with Ray (``ray``): ``clipq embed --ray`` on a local Ray, one actor per core (:mod:`.ingest_paths`);
- the pipelines a user would otherwise write (:mod:`.ingest_peers`): Qdrant's fastembed
  (``fastembed``) over clipq's fp32 graph with its ``parallel`` workers; with ``--ingest-checkpoint``
  (a transformers CLIP directory) transformers' ``CLIPImageProcessor`` + ``get_image_features`` in a
  loop, and clip-retrieval's ``inference`` from its own environment (``--ingest-clip-retrieval
  PYTHON``; recorded as not measured, with the reason, where it cannot run).

Every figure comes from one run on one machine; with shared cores compare within a run only.
Writes ``<out>/ingest.json``, ``<out>/ingest.md`` and ``<out>/ingest.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from .index import best_time  # fastest of n runs: the least disturbed figure on shared cores

BATCH = 8
#: the rows --ingest-paths may ask for (in process always runs: the other rows are read against it)
PATHS = ("triton", "ray", "fastembed", "clip-retrieval")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ingest benchmark (``--out`` and ``--quick`` come from ``clipq bench``)."""
    g = parser
    g.add_argument("--ingest-photos", default=None, metavar="DIR",
                   help="ingest: a photo folder (default: a generated phone-photo folder)")
    g.add_argument("--ingest-n", type=int, default=None, help="ingest: generated photos (default 24; 3 quick)")
    g.add_argument("--ingest-artifacts", default=None, metavar="DIR",
                   help="ingest: artifact directory (default: $CLIPQ_ARTIFACTS or the demo's)")
    g.add_argument("--ingest-checkpoint", default=None, metavar="DIR",
                   help="ingest: a transformers CLIP checkpoint for the user-written peer (skipped without)")
    g.add_argument("--ingest-paths", default=",".join(PATHS), metavar="LIST",
                   help="ingest: rows besides in process, from %(default)s")
    g.add_argument("--ingest-concurrency", default="1,2,4,8", metavar="LIST",
                   help="ingest: Triton concurrency levels (default %(default)s)")
    g.add_argument("--ingest-triton-instances", default="1", metavar="LIST",
                   help="ingest: instances of Triton's embed_image (N, or NxT: T engine threads each), one server "
                        "each, passes alternating (default %(default)s)")
    g.add_argument("--ingest-clip-retrieval", default=None, metavar="PYTHON",
                   help="ingest: the python of an environment with clip-retrieval installed (its own torch)")


def stage_ms(files: list[Path], pre: Any) -> dict[str, float]:
    """Mean ms per image of read, decode, resize + crop and normalise on this thread."""
    from clipq.runtime.preprocess import decode_image

    tot = {"read": 0.0, "decode": 0.0, "resize": 0.0, "normalise": 0.0}
    for f in files:
        t0 = time.perf_counter()
        data = f.read_bytes()
        t1 = time.perf_counter()
        img = decode_image(data, max_pixels=pre.max_pixels, draft_short=pre._draft_short)
        t2 = time.perf_counter()
        img = pre.resize_crop(img)
        t3 = time.perf_counter()
        pre.normalize(img)
        t4 = time.perf_counter()
        for k, dt in zip(tot, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            tot[k] += dt
    return {k: 1e3 * v / len(files) for k, v in tot.items()}


def _model(backend: Any, pixels: Any, repeats: int) -> dict[str, float]:
    backend.infer("clip_image", {"pixel_values": pixels})
    rounds = 4
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(rounds):
            backend.infer("clip_image", {"pixel_values": pixels})
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    n = rounds * len(pixels)
    return {"ms_per_image": 1e3 * wall / n, "core_ms_per_image": 1e3 * cpu / n}


def _paths(args: argparse.Namespace) -> list[str]:
    from clipq.runtime.errors import InvalidInputError

    got = [p.strip() for p in str(getattr(args, "ingest_paths", None) or ",".join(PATHS)).split(",") if p.strip()]
    bad = sorted(set(got) - set(PATHS) - {"none"})
    if bad:
        raise InvalidInputError(f"--ingest-paths takes {', '.join(PATHS)} (or none), got {', '.join(bad)}")
    return [p for p in got if p != "none"]


def _other_rows(args: argparse.Namespace, art: str, m: Any, folder: Path, files: list[Path], cores: int,
                repeats: int, quick: bool) -> dict[str, Any]:
    """Triton, Ray and the user-written peers, each only where asked for (``--ingest-paths``)."""
    from clipq.runtime.errors import MissingDependencyError, ServerError

    from .ingest_paths import ray_row, triton_rows
    from .ingest_peers import clip_retrieval_peer, fastembed_peer, transformers_peer

    paths = _paths(args)
    ckpt = getattr(args, "ingest_checkpoint", None)
    conc = [int(c) for c in str(getattr(args, "ingest_concurrency", None) or "1,2,4,8").split(",") if c.strip()]
    r: dict[str, Any] = {"triton": None, "ray": None, "peer_fastembed": None, "peer_clip_retrieval": None,
                         "peer_transformers": transformers_peer(ckpt, files, repeats) if ckpt else None}
    if "triton" in paths:
        counts = [c.strip() for c in str(getattr(args, "ingest_triton_instances", None) or "1").split(",") if c.strip()]
        try:
            runs = triton_rows(art, files, conc[:2] if quick else conc, repeats, instances=counts)
            r["triton"], r["triton_other_instances"] = runs[0], runs[1:]
        except ServerError as e:  # no tritonserver here: the row says why, the other rows still run
            r["triton"] = {"not_measured": f"{type(e).__name__}: {e}"[:300]}
    if "ray" in paths:
        try:
            r["ray"] = ray_row(art, folder, len(files), cores, 1 if quick else repeats)
        except MissingDependencyError as e:
            r["ray"] = {"not_measured": f"{type(e).__name__}: {e}"[:300]}
    if "fastembed" in paths:
        with tempfile.TemporaryDirectory(prefix="clipq-ingest-fe-") as work:
            r["peer_fastembed"] = fastembed_peer(m, files, Path(work), repeats, cores, ckpt)
    if "clip-retrieval" in paths:
        r["peer_clip_retrieval"] = clip_retrieval_peer(getattr(args, "ingest_clip_retrieval", None), folder,
                                                       len(files), ckpt, cores)
    return r


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and write ingest.json, ingest.md and ingest.png under ``args.out``."""
    import numpy as np

    from clipq.app.bench.index import _machine
    from clipq.app.bench.photos import phone_photos
    from clipq.runtime import ClipEncoder, connect
    from clipq.runtime.connect import default_artifacts
    from clipq.runtime.feed import usable_cores
    from clipq.runtime.index import ImageIndex, list_images
    from clipq.runtime.manifest import Manifest
    from clipq.runtime.preprocess import ImagePreprocessor

    quick = bool(getattr(args, "quick", False))
    load_start = os.getloadavg()[0]  # a shared machine's load: with the cores not all ours, read ratios
    repeats = 1 if quick else 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    art = getattr(args, "ingest_artifacts", None) or os.environ.get("CLIPQ_ARTIFACTS") or str(default_artifacts())
    tmp = None
    if getattr(args, "ingest_photos", None):
        folder = Path(args.ingest_photos)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="clipq-ingest-")
        folder = Path(tmp.name)
        n = getattr(args, "ingest_n", None) or (3 if quick else 24)
        print(f"ingest: writing {n} phone-shaped photos (+5 other forms) to {folder}")
        phone_photos(folder, n)
    try:
        files = list_images(folder)
        m = Manifest.load(art)
        cores = usable_cores()
        stages = {}
        for draft in (True, False):
            pre = ImagePreprocessor.from_manifest(m, draft=draft)
            stage_ms(files[:2], pre)  # warm the caches
            stages["draft" if draft else "full"] = stage_ms(files, pre)
        backend = connect(art, spin=False)
        try:
            enc = ClipEncoder(backend)
            pre = enc.preprocessor
            pixels = np.stack([pre.one(f) for f in (files * BATCH)[:BATCH]])
            model = _model(backend, pixels, repeats)
            enc.encode_images([files[0]])  # start-up: sessions, the decode pool
            e2e = {}
            for draft in (True, False):
                enc.path._pre = ImagePreprocessor.from_manifest(m, draft=draft)  # type: ignore[attr-defined]
                t = best_time(lambda: ImageIndex.from_images(folder, enc, progress=False), repeats)
                e2e["draft" if draft else "full"] = len(files) / t
        finally:
            backend.close()
        decode_core_ms = sum(stages["draft"].values())
        limit = cores / (1e-3 * (decode_core_ms + model["core_ms_per_image"]))
        others = _other_rows(args, art, m, folder, files, cores, repeats, quick)
        result = {
            "target": "ingest", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": _machine(),
            "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
            "config": {"artifacts": str(art), "photos": str(folder), "files": len(files), "cores": cores,
                       "batch_model": BATCH, "quick": quick, "repeats": repeats},
            "stages_ms": stages, "model": model, "end_to_end_images_per_s": e2e,
            "model_only_images_per_s": 1e3 / model["ms_per_image"], "machine_limit_images_per_s": limit,
            "share_of_limit": e2e["draft"] / limit, **others,
        }
    finally:
        if tmp is not None:
            tmp.cleanup()
    (out / "ingest.json").write_text(json.dumps(result, indent=2))
    (out / "ingest.md").write_text(markdown(result))
    plot(result, out / "ingest.png")
    print(markdown(result))
    return 0


def markdown(r: dict[str, Any]) -> str:
    """The result as a markdown table with the machine named."""
    c, s = r["config"], r["stages_ms"]
    load = r.get("load_average_1min") or {}
    lines = [f"# Ingest: {c['files']} photos, {r['machine']['cpu']}, {c['cores']} cores ({r['date']})", "",
             *([f"1-minute load average {load['start']:.1f} at the start, {load['end']:.1f} at the end "
                "(above the core count: other jobs held cores, compare within this run only).", ""] if load else []),
             "| stage (ms per image, one thread) | draft | full |", "|---|---|---|"]
    lines += [f"| {k} | {s['draft'][k]:.1f} | {s['full'][k]:.1f} |" for k in s["draft"]]
    lines += ["", "| pipeline | images/s |", "|---|---|",
              f"| in process, draft (default) | {r['end_to_end_images_per_s']['draft']:.1f} |",
              f"| in process, full decoding | {r['end_to_end_images_per_s']['full']:.1f} |",
              f"| model alone (batch {c['batch_model']}) | {r['model_only_images_per_s']:.1f} |",
              f"| machine's limit: cores / (decode + model core-ms) | {r['machine_limit_images_per_s']:.1f} |"]
    lines += [f"| {name} | {v} |" for name, v in _other_lines(r)]
    lines += ["", f"In process, draft: {100 * r['share_of_limit']:.0f} % of the machine's limit "
              f"(model {r['model']['core_ms_per_image']:.1f} core-ms per image)."]
    best = _best_peer(r)
    if best:
        lines.append(f"In process against the best user-written pipeline ({best[0]}): "
                     f"{r['end_to_end_images_per_s']['draft'] / best[1]:.1f}x.")
    runs = _triton_runs(r)
    if runs:
        lines += ["", f"Through Triton {runs[0]['server_version']} (fused embed_image, gRPC, one photo's bytes "
                  "a request), Triton's mean ms per request:", "",
                  "| instances (x engine threads) | concurrency | images/s | p50 ms | p90 ms | queue | compute input | compute infer | "
                  "compute output | average batch |", "|---|---|---|---|---|---|---|---|---|---|"]
        for run in runs:
            for row in run["rows"]:
                st = row.get("stages") or {}
                cell = [f"{st.get(k + '_ms', 0.0):.1f}" for k in ("queue", "compute_input", "compute_infer", "compute_output")]
                lines.append(f"| {_label(run)} | {row['concurrency']} | {row['images_per_s']:.1f} | "
                             f"{row['p50_ms']:.1f} | {row['p90_ms']:.1f} | {' | '.join(cell)} | "
                             f"{st.get('avg_batch') or 0:.2f} |")
    return "\n".join(lines) + "\n"


def _other_lines(r: dict[str, Any]) -> list[tuple[str, str]]:
    """(row name, images/s or "not measured: why") of Triton, Ray and the peers present in ``r``."""
    out: list[tuple[str, str]] = []
    for key, name in (("triton", "through Triton"), ("ray", "clipq embed --ray")):
        if (r.get(key) or {}).get("not_measured"):
            out.append((name, f"not measured: {r[key]['not_measured']}"))
    for run in _triton_runs(r):
        for row in run["rows"]:
            name = f"through Triton, concurrency {row['concurrency']}" + (
                f", {_label(run)} instances" if _label(run) != "1" else "")
            out.append((name, f"{row['images_per_s']:.1f}"))
    if (r.get("ray") or {}).get("images_per_s") is not None:
        y = r["ray"]
        out.append((f"clipq embed --ray, {y['workers']} actors (after ray.init {y['startup_s']:.1f} s; "
                    f"in shards {y['in_shard_images_per_s']:.1f})", f"{y['images_per_s']:.1f}"))
    if r.get("peer_transformers"):
        p = r["peer_transformers"]
        out.append((f"transformers CLIPImageProcessor + model, batch 8 ({p['preprocess_ms']:.0f} + "
                    f"{p['model_ms']:.0f} ms per image)", f"{p['images_per_s']:.1f}"))
    fe = r.get("peer_fastembed") or {}
    for key in ("default", "parallel"):
        if key in fe:
            v = fe[key]
            name = f"fastembed ImageEmbedding, fp32 graph, parallel={v['parallel']}"
            out.append((name, f"{v['images_per_s']:.1f}" if "images_per_s" in v else f"not measured: {v['not_measured']}"))
    cr = r.get("peer_clip_retrieval")
    if cr:
        out.append((f"clip-retrieval inference, hf_clip, batch 8 (whole command {cr['whole_command_images_per_s']:.1f}; "
                    f"{cr['embedded']} of {cr['files']} files embedded)" if "images_per_s" in cr
                    else "clip-retrieval inference",
                    f"{cr['images_per_s']:.1f}" if "images_per_s" in cr else f"not measured: {cr['not_measured']}"))
    return out


def _triton_runs(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The Triton servers measured (one per instance count), the default's first."""
    return [x for x in [r.get("triton"), *(r.get("triton_other_instances") or [])] if x and "rows" in x]


def _label(run: dict[str, Any]) -> str:
    """``"2"`` (instances, the engine's default threads) or ``"2x1"`` (instances x engine threads)."""
    n, t = run.get("instances", 1), run.get("threads") or 0
    return f"{n}x{t}" if t else str(n)


def _best_peer(r: dict[str, Any]) -> tuple[str, float] | None:
    """The fastest user-written pipeline measured: (name, images/s)."""
    got: dict[str, float] = {}
    if r.get("peer_transformers"):
        got["transformers loop"] = r["peer_transformers"]["images_per_s"]
    for v in (r.get("peer_fastembed") or {}).values():
        if isinstance(v, dict) and "images_per_s" in v:
            got[f"fastembed parallel={v['parallel']}"] = v["images_per_s"]
    if (r.get("peer_clip_retrieval") or {}).get("images_per_s"):
        got["clip-retrieval"] = r["peer_clip_retrieval"]["images_per_s"]
    if not got:
        return None
    k = max(got, key=got.__getitem__)
    return k, got[k]


def plot(r: dict[str, Any], path: Path) -> None:
    """A bar chart of the pipelines' images/s (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - bench extra
        return
    bars = {"draft": r["end_to_end_images_per_s"]["draft"], "full decoding": r["end_to_end_images_per_s"]["full"],
            "model alone": r["model_only_images_per_s"], "machine limit": r["machine_limit_images_per_s"]}
    for run in _triton_runs(r):
        for row in run["rows"]:
            bars[f"Triton, concurrency {row['concurrency']}" + (f" x{_label(run)}" if _label(run) != "1" else "")] = \
                row["images_per_s"]
    if (r.get("ray") or {}).get("images_per_s") is not None:
        bars[f"Ray, {r['ray']['workers']} actors"] = r["ray"]["images_per_s"]
    if r.get("peer_transformers"):
        bars["transformers loop"] = r["peer_transformers"]["images_per_s"]
    for v in (r.get("peer_fastembed") or {}).values():
        if isinstance(v, dict) and "images_per_s" in v:
            bars[f"fastembed parallel={v['parallel']}"] = v["images_per_s"]
    if (r.get("peer_clip_retrieval") or {}).get("images_per_s"):
        bars["clip-retrieval"] = r["peer_clip_retrieval"]["images_per_s"]
    colours = ["C0", "C1", "C2", "C7"] + ["C4" if k.startswith(("Triton", "Ray")) else "C3" for k in list(bars)[4:]]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.32 * len(bars)))
    ax.barh(list(bars), list(bars.values()), color=colours)
    ax.invert_yaxis()
    ax.set_xlabel("images/s")
    ax.set_title(f"{r['config']['files']} photos, {r['machine']['cpu']}, {r['config']['cores']} cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
