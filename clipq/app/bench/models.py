"""``clipq bench --target models``: exported networks against PyTorch and plain onnxruntime.

For ``clip_image``, ``clip_text``, ``vqa`` and ``img2prompt_a`` (``base`` preset: the real
architecture sizes with random weights) it times, interleaved in one run and with one thread count
for all:

- ``pytorch_eager``: how a transformers user runs it (``CLIPModel.from_pretrained`` with its
  default attention, ``get_image_features`` / ``get_text_features`` under ``inference_mode``;
  clipq's own modules for VQA and the regressor, which have no transformers equivalent);
- ``optimum_ort``: optimum's ``ORTModelForFeatureExtraction``, where optimum exports the network
  alone (the CLIP vision tower; it has no stand-alone CLIP text tower, and nothing for clipq's
  VQA or regressor graphs);
- ``ort_default``: plain onnxruntime, default session options, on the default export
  (``torch.onnx.export`` of the towers as transformers loads them; clipq's fp32 graph for VQA and
  the regressor, which have no other export);
- ``clipq_fp32``, ``clipq_opt`` (onnxruntime's transformer optimizer, measured whether the export
  adopted it or not) and ``clipq_int8`` (the int8 graph the export chose).

Writes ``<out>/models.json``, ``models.md`` (tables) and ``models.png`` (throughput plot).
Module import is stdlib only (the CLI imports it to register options).
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
ENGINES = ("pytorch_eager", "optimum_ort", "ort_default", "clipq_fp32", "clipq_opt", "clipq_int8")
#: the issue's targets for clipq's CPU default (int8) against plain onnxruntime fp32 and PyTorch
TARGETS = {"b1_vs_ort": 2.0, "b8_vs_ort": 2.2, "vs_torch": 4.5}


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
    parser.add_argument("--rounds", type=int, default=None, help="maximum timed rounds per cell (default 30; quick 3)")


# -- engines --------------------------------------------------------------------------------------
def _set_threads(threads: int) -> None:
    # OpenMP workers that busy-wait would steal the cores of the engine timed next; only effective
    # when torch is first imported here (the CLI imports it lazily)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first parallel work; harmless if it was
        pass


def _plain_session(path: Path, threads: int) -> Any:
    """What a user gets with onnxruntime's defaults (only the thread count pinned, for fairness)."""
    import onnxruntime as ort

    from clipq.runtime.backends.ort import session_options

    so = session_options(threads, spin=False)  # no spinning, as for every engine here: see make_session
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


class _Engines:
    """Builds each engine's callable for one network; unavailable ones are recorded with a reason."""

    def __init__(self, root: Path, work: Path, threads: int):
        from clipq.runtime.manifest import Manifest

        self.root, self.work, self.threads = root, work, threads
        self.m = Manifest.load(root)
        self.work.mkdir(parents=True, exist_ok=True)
        self._modules: dict[str, Any] | None = None
        self._hf_clip: Any = None
        self.skipped: dict[str, dict[str, str]] = {}

    def modules(self) -> dict[str, Any]:
        if self._modules is None:
            from clipq.models.io import load_for_export

            self._modules = dict(load_for_export(self.root))
        return self._modules

    def hf_clip(self) -> Any:
        """CLIPModel exactly as ``from_pretrained`` gives it (default attention implementation)."""
        if self._hf_clip is None:
            from transformers import CLIPModel

            self._hf_clip = CLIPModel.from_pretrained(self.m.resolve_dir(self.m.checkpoints["clip"])).eval()
        return self._hf_clip

    def torch_fn(self, name: str) -> Any:
        import torch
        import torch.nn.functional as F

        if name in ("clip_image", "clip_text"):
            clip = self.hf_clip()

            def run(feeds: dict[str, Any]) -> Any:
                with torch.inference_mode():
                    if name == "clip_image":
                        out = clip.get_image_features(pixel_values=torch.from_numpy(feeds["pixel_values"]))
                    else:
                        out = clip.get_text_features(input_ids=torch.from_numpy(feeds["input_ids"]),
                                                     attention_mask=torch.from_numpy(feeds["attention_mask"]))
                    return F.normalize(out, dim=-1).numpy()

            return run
        module = self.modules()[name]
        spec = self.m.model(name)

        def run_module(feeds: dict[str, Any]) -> Any:
            with torch.inference_mode():
                return module(*[torch.from_numpy(feeds[t.name]) for t in spec.inputs]).numpy()

        return run_module

    def default_export(self, name: str) -> Path:
        """The peer graph: the towers as transformers loads them, exported with torch.onnx defaults."""
        spec = self.m.model(name)
        if name not in ("clip_image", "clip_text"):
            return self.root / spec.file  # clipq's own networks: no other export exists
        path = self.work / f"{name}.default.onnx"
        if not path.is_file():
            from clipq.export.graphs import export_onnx
            from clipq.export.samples import SampleFactory
            from clipq.models.export_wrappers import ClipImageTower, ClipTextTower

            tower = (ClipImageTower if name == "clip_image" else ClipTextTower)(self.hf_clip()).eval()
            export_onnx(tower, spec, path, SampleFactory(self.m).inputs(spec, 2))
        return path

    def optimized(self, name: str) -> Path:
        spec = self.m.model(name)
        if "opt" in spec.variants:
            return self.root / spec.variants["opt"]
        from clipq.export.optimize import MODEL_TYPES, transformer_optimize

        path = self.work / f"{name}.opt.onnx"
        if not path.is_file():
            transformer_optimize(self.root / spec.file, path, MODEL_TYPES[name])
        return path

    def optimum_fn(self, name: str) -> Any:
        if name != "clip_image":
            raise LookupError("optimum exports no stand-alone graph for this network")
        from optimum.onnxruntime import ORTModelForFeatureExtraction
        from transformers import CLIPVisionModel

        d = self.work / "optimum_clip_vision"
        if not (d / "model.onnx").is_file():
            src = self.work / "hf_clip_vision"
            CLIPVisionModel.from_pretrained(self.m.resolve_dir(self.m.checkpoints["clip"])).save_pretrained(src)
            ORTModelForFeatureExtraction.from_pretrained(src, export=True).save_pretrained(d)
        from clipq.runtime.backends.ort import session_options

        so = session_options(self.threads, spin=False)
        model = ORTModelForFeatureExtraction.from_pretrained(d, session_options=so, provider="CPUExecutionProvider")

        def run(feeds: dict[str, Any]) -> Any:
            # optimum's feature-extraction output is the hidden states (no projection): timed, not compared
            return model(pixel_values=feeds["pixel_values"]).last_hidden_state

        return run

    def build(self, name: str, engines: list[str]) -> dict[str, Any]:
        from clipq.export.timing import make_session, session_runner

        spec = self.m.model(name)
        out: dict[str, Any] = {}
        for e in engines:
            try:
                if e == "pytorch_eager":
                    out[e] = self.torch_fn(name)
                elif e == "optimum_ort":
                    out[e] = self.optimum_fn(name)
                elif e == "ort_default":
                    out[e] = session_runner(_plain_session(self.default_export(name), self.threads))
                elif e == "clipq_fp32":
                    out[e] = session_runner(make_session(self.root / spec.file, self.threads))
                elif e == "clipq_opt":
                    out[e] = session_runner(make_session(self.optimized(name), self.threads))
                elif e == "clipq_int8":
                    if "int8" not in spec.variants:
                        raise LookupError("the export wrote no int8 graph")
                    out[e] = session_runner(make_session(self.root / spec.variants["int8"], self.threads))
            except (LookupError, ImportError) as err:
                self.skipped.setdefault(name, {})[e] = str(err)
        return out


# -- run ------------------------------------------------------------------------------------------
def _prepare(root: Path, preset: str, threads: int, networks: list[str], quick: bool = False) -> dict[str, Any]:
    """Random-weight artifacts of ``preset``, exported with int8 and optimizer candidates.

    ``quick`` exports with the fewest checks that still exercise every step (one int8 recipe,
    parity at batch 1 and 4, no optimizer candidate), to keep the smoke test short.
    """
    from clipq.runtime.manifest import Manifest

    m = Manifest.load(root) if (root / "manifest.json").is_file() else None
    if m is not None and all(n in m.models and "int8" in m.models[n].variants for n in networks):
        return {"reused": True}
    from clipq.export import ExportOptions, export_artifacts
    from clipq.export.quantize import DYNAMIC, DYNAMIC_PER_CHANNEL
    from clipq.models.io import build_random_artifacts

    t0 = time.perf_counter()
    if m is None:
        build_random_artifacts(root, preset)
    if quick:
        opts = ExportOptions(int8=True, networks=networks, threads=threads, parity_batches=(1, 4),
                             timing_rounds=2, int8_recipes=(DYNAMIC,))
    else:
        opts = ExportOptions(int8=True, optimize=True, networks=networks, threads=threads,
                             int8_recipes=(DYNAMIC, DYNAMIC_PER_CHANNEL))
    report = export_artifacts(root, opts)
    return {"reused": False, "seconds": time.perf_counter() - t0, "parity": report.markdown()}


def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpus": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["avx512_vnni"] = "avx512_vnni" in text
    except OSError:
        pass
    from clipq.runtime.manifest import package_versions

    info["versions"] = package_versions()
    return info


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and write models.json / models.md / models.png into ``args.out``."""
    import numpy as np

    from clipq.export.parity import compare
    from clipq.export.samples import SampleFactory
    from clipq.export.timing import interleaved, summarize

    quick = bool(getattr(args, "quick", False))
    preset = getattr(args, "preset", None) or ("tiny" if quick else "base")
    threads = int(getattr(args, "threads", None) or 2)
    batches = [int(b) for b in (getattr(args, "batches", None) or ("1,4" if quick else "1,8,32")).split(",")]
    networks = (getattr(args, "networks", None) or ",".join(NETWORKS)).split(",")
    engines = (getattr(args, "engines", None) or ",".join(ENGINES)).split(",")
    budget = float(getattr(args, "budget_s", None) or (1.0 if quick else 60.0))
    rounds = int(getattr(args, "rounds", None) or (3 if quick else 30))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(getattr(args, "bench_artifacts", None) or out / f"artifacts-{preset}")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _set_threads(threads)
    prep = _prepare(root, preset, threads, networks, quick)
    eng = _Engines(root, out / f"work-{preset}", threads)
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for name in networks:
        spec = eng.m.model(name)
        fns = eng.build(name, engines)
        factory = SampleFactory(eng.m, seed=1)
        for b in batches:
            feeds = factory.inputs(spec, b, offset=3, long_texts=False)
            outs = {k: f(feeds) for k, f in fns.items()}  # also the warm-up call
            ref = outs.get("clipq_fp32")
            secs = interleaved({k: (lambda f=f, x=feeds: f(x)) for k, f in fns.items()}, rounds=rounds, warmup=0,
                               budget_s=budget)
            for k, s in secs.items():
                row = {"network": name, "engine": k, "batch": b, **summarize(s, b)}
                if ref is not None and k != "optimum_ort":
                    row["cos_vs_fp32"] = compare(ref, outs[k])["min_cos"]
                rows.append(row)
            log.info("%s batch %d: %s", name, b, {k: f"{np.median(v) * 1e3:.1f} ms" for k, v in secs.items()})
        del fns
    result = {
        "target": "models",
        "config": {"preset": preset, "threads": threads, "batches": batches, "networks": networks,
                   "engines": engines, "budget_s": budget, "rounds": rounds, "quick": quick},
        "machine": _machine(),
        "artifacts": str(root),
        "prepare": prep,
        "skipped": eng.skipped,
        "seconds": time.perf_counter() - t_start,
        "results": rows,
        "summary": summarize_targets(rows),
    }
    (out / "models.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "models.md").write_text(markdown(result))
    plot(result, out / "models.png")
    print(markdown(result))
    return 0


# -- reporting ------------------------------------------------------------------------------------
def _index(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(r["network"], r["engine"], r["batch"]): r for r in rows}


def summarize_targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """clipq's int8 default against plain onnxruntime fp32 and PyTorch, and fp32 against plain ORT."""
    idx = _index(rows)
    out: dict[str, Any] = {}
    for net in sorted({r["network"] for r in rows}):
        s: dict[str, Any] = {}
        for b in sorted({r["batch"] for r in rows if r["network"] == net}):
            int8, peer = idx.get((net, "clipq_int8", b)), idx.get((net, "ort_default", b))
            fp32, torch_ = idx.get((net, "clipq_fp32", b)), idx.get((net, "pytorch_eager", b))
            if int8 and peer:
                s[f"int8_vs_ort_b{b}"] = int8["items_per_s"] / peer["items_per_s"]
            if int8 and torch_:
                s[f"int8_vs_torch_b{b}"] = int8["items_per_s"] / torch_["items_per_s"]
            if fp32 and peer:
                s[f"fp32_vs_ort_b{b}"] = fp32["items_per_s"] / peer["items_per_s"]
            if int8 and "cos_vs_fp32" in int8:
                s[f"int8_cos_b{b}"] = int8["cos_vs_fp32"]
        out[net] = s
    return out


def markdown(result: dict[str, Any]) -> str:
    """Markdown tables: one row per (network, engine, batch), then the target ratios."""
    cfg, rows = result["config"], result["results"]
    idx = _index(rows)
    lines = [
        f"### clipq bench --target models ({cfg['preset']} preset, {cfg['threads']} threads, one interleaved run)",
        "",
        f"Machine: {result['machine'].get('cpu', '?')}, {result['machine'].get('cpus')} CPUs. "
        "Latency in ms; items/s from the median; x ORT = items/s over plain onnxruntime fp32 (`ort_default`); "
        "x torch = over PyTorch eager; cos = min row cosine against clipq's fp32 graph.",
        "",
        "| network | engine | batch | p50 ms | p95 ms | p99 ms | items/s | x ORT | x torch | cos |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        peer = idx.get((r["network"], "ort_default", r["batch"]))
        tor = idx.get((r["network"], "pytorch_eager", r["batch"]))
        x_ort = f"{r['items_per_s'] / peer['items_per_s']:.2f}" if peer else "-"
        x_t = f"{r['items_per_s'] / tor['items_per_s']:.2f}" if tor else "-"
        cos = f"{r['cos_vs_fp32']:.5f}" if "cos_vs_fp32" in r else "-"
        lines.append(f"| {r['network']} | {r['engine']} | {r['batch']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['items_per_s']:.1f} | {x_ort} | {x_t} | {cos} |")
    for net, why in result.get("skipped", {}).items():
        for e, reason in why.items():
            lines.append(f"\n`{e}` not run for {net}: {reason}")
    lines += ["", "Targets (clipq int8 default): >= 2x plain ORT fp32 at batch 1, >= 2.2x at batch 8, "
              ">= 4.5x PyTorch eager; clipq fp32 >= plain ORT at every batch.", "",
              "| network | ratio | value |", "|---|---|---:|"]
    for net, s in result.get("summary", {}).items():
        for k, v in s.items():
            lines.append(f"| {net} | {k} | {v:.4f} |" if "cos" in k else f"| {net} | {k} | {v:.2f} |")
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
