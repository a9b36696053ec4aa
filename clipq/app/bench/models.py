"""``clipq bench --target models``: clipq's exported networks against the engines a user would pick.

For ``clip_image``, ``clip_text``, ``vqa`` and ``img2prompt_a`` (``base`` preset: the real
architecture sizes with random weights) it times every engine of :mod:`.peers` — PyTorch eager,
bf16 autocast and torch.compile; optimum's ORTModel; plain onnxruntime fp32 and optimum's dynamic
int8; OpenVINO on the plain ONNX and with NNCF int8; clipq's fp32 / optimised / int8 graphs and
clipq's measured CPU default — with one thread count for all, **each engine in its own process**
(two engines in one process disturb each other by 1.25-1.8x), in alternating rounds.

Reported per (network, engine, batch): items/s, p50/p95/p99, cosine against clipq's fp32 graph, the
ratio to plain onnxruntime fp32 and to the best peer, and the achieved TOPS against the CPU's peak
for the precision the engine computes in (:mod:`.macs`). Writes ``<out>/models.json``, ``models.md``
and ``models.png``. Module import is stdlib only (the CLI imports it to register options).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

NETWORKS = ("clip_image", "clip_text", "vqa", "img2prompt_a")
PEERS = ("pytorch_eager", "torch_bf16", "torch_compile", "optimum_ort", "ort_default", "ort_optimum_int8", "ov_plain",
         "ov_nncf_int8")
CLIPQ = ("clipq_fp32", "clipq_opt", "clipq_int8", "clipq_default")
ENGINES = PEERS + CLIPQ
#: left out of --quick unless named with --engines: compiling costs more than the whole smoke test
SLOW = ("torch_compile",)
#: the issue's targets for clipq's CPU default
TARGETS = {"default_vs_best_peer": 1.0, "aim_vs_best_peer": 1.2}


def add_arguments(parser: Any) -> None:
    parser.add_argument("--preset", default=None, help="model preset (default: base; tiny with --quick)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every engine (default %(default)s)")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8,32; quick 1,4)")
    parser.add_argument("--networks", default=None, help=f"comma-separated subset of {','.join(NETWORKS)}")
    parser.add_argument("--engines", default=None, help=f"comma-separated subset of {','.join(ENGINES)}")
    parser.add_argument("--bench-artifacts", default=None, metavar="DIR",
                        help="exported artifacts to bench (default: <out>/artifacts-<preset>, built when missing)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds per (network, batch) cell, all engines together (default 60; quick 1)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds per cell (default 3; quick 1)")


# -- run ------------------------------------------------------------------------------------------
def _networks(named: str | None, root: Path) -> list[str]:
    """The networks to bench: ``--networks``, else those of ``NETWORKS`` that existing artifacts hold.

    An import (``clipq import``) holds only the CLIP towers: benching it must not try to export the
    heads into the user's directory.
    """
    if named:
        return named.split(",")
    manifest = root / "manifest.json"
    if manifest.is_file():
        from clipq.runtime.manifest import Manifest

        held = [n for n in NETWORKS if n in Manifest.load(root).models]
        if held:
            return held
    return list(NETWORKS)


def _prepare(root: Path, preset: str, threads: int, networks: list[str], quick: bool = False) -> dict[str, Any]:
    """Random-weight artifacts of ``preset``, exported with int8, optimizer candidates and OpenVINO.

    The export ends with the engine selection (``spec.meta["cpu_default"]``), which ``clipq_default``
    runs. ``quick`` exports with the fewest checks that still exercise every step (one int8 recipe,
    parity at batch 1 and 4, no optimizer candidate, a small NNCF calibration set, one timing round).
    """
    from clipq.runtime.manifest import Manifest
    from clipq.runtime.records import CpuDefault

    m = Manifest.load(root) if (root / "manifest.json").is_file() else None
    if m is not None and all(n in m.models and "int8" in m.models[n].variants and CpuDefault.of(m.models[n])
                             for n in networks):
        return {"reused": True}
    from clipq.export import ExportOptions, export_artifacts
    from clipq.export.quantize import DYNAMIC, DYNAMIC_PER_CHANNEL
    from clipq.models.io import build_random_artifacts

    t0 = time.perf_counter()
    if m is None:
        build_random_artifacts(root, preset)
    if quick:
        opts = ExportOptions(int8=True, networks=networks, threads=threads, parity_batches=(1, 4), timing_rounds=2,
                             int8_recipes=(DYNAMIC,), openvino=True, openvino_subset_size=16,
                             selection_batches=(1, 4), selection_rounds=1)
    else:
        opts = ExportOptions(int8=True, optimize=True, networks=networks, threads=threads, openvino=True,
                             int8_recipes=(DYNAMIC, DYNAMIC_PER_CHANNEL), selection_batches=(1, 8, 32))
    report = export_artifacts(root, opts)
    return {"reused": False, "seconds": time.perf_counter() - t0, "parity": report.markdown(),
            "selection": {n: f"{r['engine']}/{r['variant']}" for n, r in report.selection.items()}}


def _machine(threads: int) -> dict[str, Any]:
    from clipq.runtime.backends.common import cpu_facts
    from clipq.runtime.manifest import package_versions

    from .macs import cores_text, max_mhz

    facts = cpu_facts(threads)
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpus": os.cpu_count(), **facts, "max_mhz": max_mhz(), "topology": cores_text(facts)}
    info["avx512_vnni"] = bool(facts["flags"].get("avx512_vnni"))
    info["versions"] = package_versions()
    for dist in ("openvino", "nncf"):
        try:
            from importlib import metadata

            info["versions"][dist] = metadata.version(dist)
        except Exception:  # noqa: BLE001 - not installed
            pass
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info


def _start(name: str, engines: list[str], root: Path, work: Path, threads: int) -> tuple[dict[str, Any], dict[str, str]]:
    """One worker process per engine, built concurrently (the one file several share is made first)."""
    from clipq.export.timing import ProcessEngine, WorkerError
    from clipq.runtime.manifest import Manifest

    from .peers import default_export

    default_export(Manifest.load(root), name, work)
    started: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    env = {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    for e in engines:
        started[e] = ProcessEngine("clipq.app.bench.peers:make", {"root": str(root), "work": str(work), "network": name,
                                   "engine": e, "threads": threads}, env=env, name=f"{name} {e}", wait=False)
    workers: dict[str, Any] = {}
    for e, w in started.items():
        try:
            workers[e] = w.ready()
        except WorkerError as err:
            reason = str(err).split(": ", 1)[-1]
            for prefix in ("LookupError: ", "ImportError: ", "ModuleNotFoundError: "):
                reason = reason.replace(prefix, "")
            skipped[e] = reason
            log.info("%s: %s not run: %s", name, e, reason)
    return workers, skipped


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and write models.json / models.md / models.png into ``args.out``."""
    import numpy as np

    from clipq.export.parity import compare
    from clipq.export.samples import SampleFactory
    from clipq.export.selection import timing_sample
    from clipq.export.timing import alternating, summarize
    from clipq.runtime.manifest import Manifest

    from .macs import graph_macs, peak

    quick = bool(getattr(args, "quick", False))
    preset = getattr(args, "preset", None) or ("tiny" if quick else "base")
    threads = int(getattr(args, "threads", None) or 2)
    batches = [int(b) for b in (getattr(args, "batches", None) or ("1,4" if quick else "1,8,32")).split(",")]
    named = getattr(args, "engines", None)
    engines = named.split(",") if named else [e for e in ENGINES if not (quick and e in SLOW)]
    budget = float(getattr(args, "budget_s", None) or (1.0 if quick else 60.0))
    rounds = int(getattr(args, "rounds", None) or (1 if quick else 3))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(getattr(args, "bench_artifacts", None) or out / f"artifacts-{preset}")
    networks = _networks(getattr(args, "networks", None), root)
    work = out / f"work-{preset}"
    work.mkdir(parents=True, exist_ok=True)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    prep = _prepare(root, preset, threads, networks, quick)
    m = Manifest.load(root)
    machine = _machine(threads)
    images, texts = timing_sample()
    rows: list[dict[str, Any]] = []
    skipped: dict[str, dict[str, str]] = {}
    if quick and not named:
        for e in SLOW:
            skipped.setdefault("*", {})[e] = "not in --quick (compilation time); name it with --engines"
    macs: dict[str, dict[str, int]] = {}
    t_start = time.perf_counter()
    for name in networks:
        spec = m.model(name)
        factory = SampleFactory(m, seed=1, images=images, texts=texts)
        feeds, outs = {}, {}
        for b in batches:
            feeds[b] = work / f"feeds.{name}.b{b}.npz"
            np.savez(feeds[b], **factory.inputs(spec, b, offset=3, long_texts=False))
            with np.load(feeds[b]) as z:
                macs.setdefault(name, {})[str(b)] = graph_macs(m.root / spec.file, {k: z[k] for k in z.files})
        workers, why = _start(name, engines, root, work, threads)
        if why:
            skipped[name] = why
        try:
            for e, w in workers.items():  # outputs for the cosine column (also each worker's first call)
                outs[e] = {b: w.run(feeds[b], work / f"out.{name}.{e}.b{b}.npy") for b in batches}
            per_cell = budget / max(1, rounds * len(workers))
            secs = alternating(workers, feeds, rounds=rounds, calls=10 if not quick else 2, budget_s=per_cell,
                               pause_s=0.2)
            infos = {e: w.info for e, w in workers.items()}
        finally:
            for w in workers.values():
                w.close()
        ref = outs.get("clipq_fp32")
        for e, per in secs.items():
            for b in batches:
                s = np.concatenate(per[b])
                row = {"network": name, "engine": e, "batch": b, **summarize(s, b), **{
                    k: v for k, v in infos[e].items() if k in ("precision", "choice")}}
                if ref is not None and infos[e].get("compare", True):
                    row["cos_vs_fp32"] = compare(ref[b], outs[e][b])["min_cos"]
                pk = peak(machine, row.get("precision", "fp32"), threads)
                row["tops"] = 2 * macs[name][str(b)] / b * row["items_per_s"] / 1e12
                row["peak_tops"] = pk["peak_tops"]
                row["pct_of_peak"] = 100.0 * row["tops"] / pk["peak_tops"] if pk["peak_tops"] else None
                rows.append(row)
        log.info("%s: %s", name, {r["engine"]: f"b{r['batch']} {r['p50_ms']:.1f} ms" for r in rows if r["network"] == name})
    peaks = {p: peak(machine, p, threads) for p in ("int8", "bf16", "fp32")}
    result = {
        "target": "models",
        "config": {"preset": preset, "threads": threads, "batches": batches, "networks": networks,
                   "engines": engines, "budget_s": budget, "rounds": rounds, "quick": quick,
                   "isolation": "each engine in its own process, alternating rounds"},
        "machine": machine,
        "artifacts": str(root),
        "prepare": prep,
        "skipped": skipped,
        "seconds": time.perf_counter() - t_start,
        "macs_per_call": macs,
        "peaks": peaks,
        "results": rows,
        "summary": summarize_targets(rows),
        "best_peer": best_peers(rows),
    }
    (out / "models.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "models.md").write_text(markdown(result))
    plot(result, out / "models.png")
    print(markdown(result))
    return 0


# -- reporting ------------------------------------------------------------------------------------
def _index(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(r["network"], r["engine"], r["batch"]): r for r in rows}


def best_peers(rows: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """network -> batch -> the peer (not clipq) with the most items/s."""
    out: dict[str, dict[str, str]] = {}
    for r in rows:
        if r["engine"] in CLIPQ:
            continue
        cur = out.setdefault(r["network"], {}).get(str(r["batch"]))
        best = next((x for x in rows if x["network"] == r["network"] and x["batch"] == r["batch"]
                     and x["engine"] == cur), None)
        if best is None or r["items_per_s"] > best["items_per_s"]:
            out[r["network"]][str(r["batch"])] = r["engine"]
    return out


def summarize_targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """clipq's default and int8 against plain onnxruntime fp32, the best peer and PyTorch."""
    idx = _index(rows)
    best = best_peers(rows)
    out: dict[str, Any] = {}
    for net in sorted({r["network"] for r in rows}):
        s: dict[str, Any] = {}
        for b in sorted({r["batch"] for r in rows if r["network"] == net}):
            peer, torch_ = idx.get((net, "ort_default", b)), idx.get((net, "pytorch_eager", b))
            top = idx.get((net, best.get(net, {}).get(str(b), ""), b))
            for key, e in (("default", "clipq_default"), ("int8", "clipq_int8"), ("fp32", "clipq_fp32")):
                r = idx.get((net, e, b))
                if r and peer:
                    s[f"{key}_vs_ort_b{b}"] = r["items_per_s"] / peer["items_per_s"]
                if r and top and key == "default":
                    s[f"default_vs_best_peer_b{b}"] = r["items_per_s"] / top["items_per_s"]
                if r and torch_ and key != "fp32":
                    s[f"{key}_vs_torch_b{b}"] = r["items_per_s"] / torch_["items_per_s"]
                if r and "cos_vs_fp32" in r and key != "fp32":
                    s[f"{key}_cos_b{b}"] = r["cos_vs_fp32"]
        out[net] = s
    return out


def _f(x: Any, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def markdown(result: dict[str, Any]) -> str:
    """Markdown tables: one row per (network, engine, batch), the targets, the machine's peaks."""
    cfg, rows, mach = result["config"], result["results"], result["machine"]
    idx = _index(rows)
    best = result.get("best_peer") or best_peers(rows)
    flags = ", ".join(f for f, on in (mach.get("flags") or {}).items() if on)
    lines = [
        f"### clipq bench --target models ({cfg['preset']} preset, {cfg['threads']} threads, "
        f"{cfg.get('isolation', 'one process')})",
        "",
        f"Machine: {mach.get('cpu', '?')} [{flags}]; {mach.get('topology', '')}. Load average at the end "
        f"{', '.join(f'{x:.2f}' for x in mach.get('load_average', ())) or '?'}. Latency in ms; items/s from the median; "
        "x ORT = items/s over plain onnxruntime fp32 (`ort_default`); x best = over the fastest peer (not clipq) of "
        "that cell; cos = min row cosine against clipq's fp32 graph; TOPS = 2 x MACs x items/s, % of the peak of the "
        "precision the engine computes in.",
        "",
        "| network | engine | batch | p50 ms | p95 ms | p99 ms | items/s | x ORT | x best | cos | prec | TOPS | % peak |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        peer = idx.get((r["network"], "ort_default", r["batch"]))
        top = idx.get((r["network"], best.get(r["network"], {}).get(str(r["batch"]), ""), r["batch"]))
        name = r["engine"] + (f" ({r['choice']})" if r.get("choice") else "")
        lines.append(
            f"| {r['network']} | {name} | {r['batch']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['items_per_s']:.1f} | {_f(peer and r['items_per_s'] / peer['items_per_s'], '.2f')} | "
            f"{_f(top and r['items_per_s'] / top['items_per_s'], '.2f')} | {_f(r.get('cos_vs_fp32'), '.5f')} | "
            f"{r.get('precision', '-')} | {_f(r.get('tops'), '.3f')} | {_f(r.get('pct_of_peak'), '.1f')} |")
    for net, why in result.get("skipped", {}).items():
        for e, reason in why.items():
            lines.append(f"\n`{e}` not run for {net}: {reason}")
    lines += ["", "Targets: clipq's CPU default (`clipq_default`) >= 1.0x the fastest peer at every batch (aim 1.2x); "
              "clipq fp32 >= plain ORT.", "", "| network | ratio | value |", "|---|---|---:|"]
    for net, s in result.get("summary", {}).items():
        for k, v in s.items():
            lines.append(f"| {net} | {k} | {v:.4f} |" if "cos" in k else f"| {net} | {k} | {v:.2f} |")
    clock = next(iter((result.get("peaks") or {}).values()), {}).get("clock", "/proc/cpuinfo's cpu MHz")
    lines += ["", f"Peaks used for % of peak (cores x clock x MACs/cycle/core x 2; the clock is {clock}):", ""]
    for p, pk in (result.get("peaks") or {}).items():
        lines.append(f"- {p}: {pk['peak_tops']:.3f} TOPS ({pk['cores']} cores x {pk['ghz']:.2f} GHz x "
                     f"{pk['macs_per_cycle_per_core']} MACs/cycle via {pk['isa']}): {pk['assumes']}")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Items/s per engine, grouped by batch size, one panel per network (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["results"]
    nets = list(dict.fromkeys(r["network"] for r in rows))
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    idx = _index(rows)
    fig, axes = plt.subplots(1, max(1, len(nets)), figsize=(4.2 * max(1, len(nets)), 3.8), squeeze=False)
    width = 0.8 / max(1, len(engines))
    for ax, net in zip(axes[0], nets):
        for i, e in enumerate(engines):
            ys = [idx[(net, e, b)]["items_per_s"] if (net, e, b) in idx else 0.0 for b in batches]
            ax.bar([j + i * width for j in range(len(batches))], ys, width, label=e)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(batches))], [f"b{b}" for b in batches])
        ax.set_yscale("log")
        ax.set_title(net)
        ax.set_ylabel("items/s")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(engines), fontsize=8, frameon=False)
    cfg = result["config"]
    fig.suptitle(f"clipq bench models: {cfg['preset']} preset, {cfg['threads']} threads")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
