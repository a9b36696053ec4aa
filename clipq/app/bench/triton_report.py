"""Cells, tables and the plot of ``clipq bench --target triton`` (the measuring is in :mod:`.triton`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Cell:
    """One measured configuration."""

    target: str
    mode: str  # in-process | grpc | http
    concurrency: int
    batching: str  # on | off | - (in-process)
    requests: int = 0
    errors: int = 0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    throughput_rps: float = 0.0
    server_avg_batch: float | None = None
    phase: str = "grid"
    loadavg_1m: float = 0.0  # at the end of the cell: a shared machine's background load shows here
    pipeline: str = "-"  # fused | ensemble (how the server ran embed_image / embed_text) | - (in-process)
    #: model -> Triton's per-stage statistics over the cell (mean ms per request, requests, average batch)
    server_stages: dict[str, dict[str, Any]] | None = None


@dataclass
class Setup:
    artifacts: Path
    quick: bool
    targets: list[str]
    concurrency: list[int]
    protocols: list[str]
    seconds: float
    requests: int
    rounds: int
    queue_delay_us: int
    spin: bool
    variant: str = "fp32"
    pipelines: list[str] = field(default_factory=lambda: ["fused", "ensemble"])
    notes: list[str] = field(default_factory=list)

#: Triton's per-request stages, in the order a request passes them
STAGES = ("queue", "compute_input", "compute_infer", "compute_output")



def find_cell(cells: list[Cell], **kw: Any) -> Cell | None:
    for c in cells:
        if all(getattr(c, k) == v for k, v in kw.items()):
            return c
    return None


def targets(cells: list[Cell], setup: Setup) -> list[dict[str, Any]]:
    out = []
    lat = [c for c in cells if c.phase == "latency"]
    grid = [c for c in cells if c.phase == "grid"]
    inp, grpc = find_cell(lat, target="clip_image", mode="in-process"), find_cell(lat, target="clip_image", mode="grpc")
    if inp and grpc:
        over = grpc.p50_ms / inp.p50_ms - 1
        out.append({"target": "clip_image batch 1: gRPC p50 within 5 % of in-process",
                    "measured": f"{grpc.p50_ms:.2f} vs {inp.p50_ms:.2f} ms ({over:+.1%})", "met": over <= 0.05})
    cmax, cmin = max(setup.concurrency), min(setup.concurrency)
    for target in setup.targets:
        for proto in setup.protocols:
            on_hi = find_cell(grid, target=target, mode=proto, concurrency=cmax, batching="on")
            on_lo = find_cell(grid, target=target, mode=proto, concurrency=cmin, batching="on")
            off_hi = find_cell(grid, target=target, mode=proto, concurrency=cmax, batching="off")
            if on_hi and on_lo and off_hi and on_lo.throughput_rps > 0 and off_hi.throughput_rps > 0:
                ratio = on_hi.throughput_rps / on_lo.throughput_rps
                vs_off = on_hi.throughput_rps / off_hi.throughput_rps
                out.append({"target": f"{target} {proto}: dynamic batching c{cmax} >= 1.3x c{cmin} and above no batching",
                            "measured": f"{ratio:.2f}x c{cmin}; {vs_off:.2f}x without batching "
                                        f"(server batch {on_hi.server_avg_batch or 0:.2f})",
                            "met": ratio >= 1.3 and vs_off > 1.0})
    for proto in setup.protocols[:1]:
        ei, ci = find_cell(lat, target="embed_image", mode=proto), find_cell(lat, target="clip_image", mode=proto)
        if ei and ci:
            over = ei.p50_ms / ci.p50_ms - 1
            out.append({"target": f"embed_image (bytes in) within 20 % of clip_image (tensors in), {proto}",
                        "measured": f"{ei.p50_ms:.2f} vs {ci.p50_ms:.2f} ms ({over:+.1%})", "met": over <= 0.20})
    return out


def perf_targets(cells: list[Cell], perf: dict[str, Any] | None, setup: Setup) -> list[dict[str, Any]]:
    """The serving-overhead targets on perf_analyzer's figures: c=1 p50 within 1.0 ms of in-process, c16 >= 1.3x c1."""
    if not perf or "runs" not in perf:
        return []
    lat = [c for c in cells if c.phase == "latency"]
    out = []
    cmax, cmin = max(setup.concurrency), min(setup.concurrency)
    for target in ("embed_text", "embed_image"):
        inp = find_cell(lat, target=target, mode="in-process")
        for label in perf_labels(perf, target):
            lo, hi = perf["runs"].get(f"{label}_c{cmin}", {}), perf["runs"].get(f"{label}_c{cmax}", {})
            if inp and "p50_ms" in lo:
                over = lo["p50_ms"] - inp.p50_ms
                out.append({"target": f"{label}: perf_analyzer c={cmin} p50 within 1.0 ms of in-process",
                            "measured": f"{lo['p50_ms']:.2f} vs {inp.p50_ms:.2f} ms ({over:+.2f} ms)", "met": over <= 1.0})
            if "throughput_rps" in lo and "throughput_rps" in hi and lo["throughput_rps"] > 0:
                ratio = hi["throughput_rps"] / lo["throughput_rps"]
                out.append({"target": f"{label}: perf_analyzer c={cmax} >= 1.3x c={cmin}",
                            "measured": f"{hi['throughput_rps']:.1f} vs {lo['throughput_rps']:.1f} req/s ({ratio:.2f}x)",
                            "met": ratio >= 1.3})
    return out


def perf_labels(perf: dict[str, Any], target: str) -> list[str]:
    """The perf_analyzer run labels of one target: ``embed_text`` (main server), ``embed_text[ensemble]`` ..."""
    labels = []
    for key in perf.get("runs", {}):
        label = key.rsplit("_c", 1)[0]
        if (label == target or label.startswith(f"{target}[")) and label not in labels:
            labels.append(label)
    return labels


def stage_rows(cells: list[Cell]) -> list[str]:
    """Markdown rows: per server cell and model it crossed, the mean ms per request of each stage."""
    rows = []
    for c in cells:
        for model, st in (c.server_stages or {}).items():
            batch = f"{st['avg_batch']:.2f}" if st.get("avg_batch") else "-"
            rows.append(f"| {c.target} | {c.pipeline} | {c.mode} | {c.concurrency} | `{model}` | {st['requests']} | "
                        + " | ".join(f"{st[f'{k}_ms']:.3f}" for k in STAGES)
                        + f" | {st['total_ms']:.3f} | {batch} |")
    return rows


def markdown(setup: Setup, cells: list[Cell], targets: list[dict[str, Any]], env: dict[str, Any],
              perf: dict[str, Any] | None, ceiling: list[dict[str, Any]] | None = None) -> str:
    lines = ["# Triton serving benchmark", "",
             f"Artifacts `{setup.artifacts}`{' (quick: tiny generated models)' if setup.quick else ''}; "
             f"{env['cpus']} CPUs, load average at start {env['loadavg']}; tritonserver {env['server_version']}; "
             f"variant {setup.variant}; onnxruntime spinning {'on' if setup.spin else 'off'}; "
             f"queue delay {setup.queue_delay_us} us; load average at the end {env.get('loadavg_end', '?')}.", ""]
    lat = [c for c in cells if c.phase == "latency"]
    if lat:
        lines += ["## Batch 1, concurrency 1 (interleaved rounds)", "",
                  "| target | in-process p50 ms | gRPC p50 ms | HTTP p50 ms | gRPC over in-process | HTTP over in-process |",
                  "|---|---|---|---|---|---|"]
        def fmt(c: Cell | None) -> str:
            return f"{c.p50_ms:.2f}" if c else "-"

        def over(c: Cell | None, base: Cell | None) -> str:
            return f"{c.p50_ms / base.p50_ms - 1:+.1%}" if c and base and base.p50_ms else "-"

        for t in setup.targets:
            i, g, h = (find_cell(lat, target=t, mode=m) for m in ("in-process", "grpc", "http"))
            lines.append(f"| {t} | {fmt(i)} | {fmt(g)} | {fmt(h)} | {over(g, i)} | {over(h, i)} |")
        extra = [c for c in lat if c.mode.startswith("grpc-")]
        if extra:
            lines += ["", f"The main servers run `embed_image` / `embed_text` as `{setup.pipelines[0]}` models; the same "
                      "rounds against a server with the other pipelines (gRPC):", "",
                      "| target | pipelines | gRPC p50 ms | over in-process | main server gRPC p50 ms |", "|---|---|---|---|---|"]
            for c in extra:
                i, g = find_cell(lat, target=c.target, mode="in-process"), find_cell(lat, target=c.target, mode="grpc")
                lines.append(f"| {c.target} | {c.pipeline} | {c.p50_ms:.2f} | "
                             f"{c.p50_ms - i.p50_ms if i else 0:+.2f} ms | {fmt(g)} |")
        lines.append("")
        rows = stage_rows(lat)
        if rows:
            lines += ["## Server-side stages at concurrency 1 (Triton statistics, mean ms per request)", "",
                      "Over the interleaved rounds above. `total` is Triton's whole time for the request in that "
                      "model (an ensemble's includes its steps); what a client sees beyond the first model's total is "
                      "the protocol, the client library and the network stack.", "",
                      "| target | pipelines | mode | c | model | requests | queue | compute input | compute infer | "
                      "compute output | total | avg batch |", "|---|---|---|---|---|---|---|---|---|---|---|---|",
                      *rows, ""]
    grid = [c for c in cells if c.phase == "grid"]
    if grid:
        lines += ["## Throughput (req/s, batch 1 per request) and p50 latency", "",
                  "| target | mode | batching | " + " | ".join(f"c={c}" for c in setup.concurrency) + " | server batch at max c |",
                  "|---|---|---|" + "---|" * len(setup.concurrency) + "---|"]
        for t in setup.targets:
            for mode in ["in-process", *setup.protocols]:
                for b in (["-"] if mode == "in-process" else ["on", "off"]):
                    row = [find_cell(grid, target=t, mode=mode, batching=b, concurrency=c) for c in setup.concurrency]
                    if not any(row):
                        continue
                    vals = [f"{c.throughput_rps:.1f} ({c.p50_ms:.1f} ms)" if c else "-" for c in row]
                    last = row[-1].server_avg_batch if row[-1] else None
                    lines.append(f"| {t} | {mode} | {b} | " + " | ".join(vals) + f" | {last:.2f} |"
                                 if last else f"| {t} | {mode} | {b} | " + " | ".join(vals) + " | - |")
        lines.append("")
    high = [c for c in grid if c.concurrency == max(setup.concurrency) and c.batching == "on" and c.server_stages]
    if high:
        lines += [f"## Server-side stages at concurrency {max(setup.concurrency)}, dynamic batching on", "",
                  "| target | pipelines | mode | c | model | requests | queue | compute input | compute infer | "
                  "compute output | total | avg batch |", "|---|---|---|---|---|---|---|---|---|---|---|---|",
                  *stage_rows(high), ""]
    if ceiling:
        sizes = list(ceiling[0]["ms_per_item"])
        lines += ["## What batching can buy at most (in-process, ms per item)", "",
                  "| network | " + " | ".join(f"batch {b}" for b in sizes) + " | best speed-up over batch 1 |",
                  "|---|" + "---|" * len(sizes) + "---|"]
        for row in ceiling:
            best = max(row["speedup_vs_batch1"].values())
            lines.append(f"| {row['network']} | " + " | ".join(f"{row['ms_per_item'][b]:.2f}" for b in sizes)
                         + f" | {best:.2f}x |")
        lines.append("")
    if targets:
        lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |" for t in targets]
        lines.append("")
    if perf:
        lines += ["## perf_analyzer (gRPC, batch 1)", ""]
        if "skipped" in perf:
            lines += [perf["skipped"], ""]
        else:
            lines += ["| run | req/s | p50 ms | p99 ms | server queue ms | server compute input ms | "
                      "server compute infer ms | server compute output ms |", "|---|---|---|---|---|---|---|---|"]
            for name, r in perf["runs"].items():
                if "throughput_rps" in r:
                    lines.append(f"| {name} | {r['throughput_rps']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                                 f"{r['server_queue_ms']:.3f} | {r.get('server_input_ms', 0):.3f} | "
                                 f"{r['server_compute_ms']:.3f} | {r.get('server_output_ms', 0):.3f} |")
                else:
                    lines.append(f"| {name} | failed (rc {r['rc']}) | | | | | | |")
            lines += ["", "Raw output in `perf_analyzer/`.", ""]
    if setup.notes:
        lines += ["## Notes", "", *[f"- {n}" for n in setup.notes], ""]
    return "\n".join(lines)


def plot(setup: Setup, cells: list[Cell], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    grid = [c for c in cells if c.phase == "grid"]
    fig, axes = plt.subplots(1, len(setup.targets), figsize=(5 * len(setup.targets), 4), squeeze=False)
    for ax, t in zip(axes[0], setup.targets):
        for mode in ["in-process", *setup.protocols]:
            for b in (["-"] if mode == "in-process" else ["on", "off"]):
                pts = [(c.concurrency, c.throughput_rps) for c in grid if c.target == t and c.mode == mode and c.batching == b]
                if pts:
                    xs, ys = zip(*sorted(pts))
                    ax.plot(xs, ys, marker="o", linestyle="-" if b != "off" else "--",
                            label=mode if b == "-" else f"{mode}, batching {b}")
        ax.set_title(t)
        ax.set_xlabel("concurrency")
        ax.set_ylabel("requests / s")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
