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
    notes: list[str] = field(default_factory=list)



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
    for proto in setup.protocols:
        ei, ci = find_cell(lat, target="embed_image", mode=proto), find_cell(lat, target="clip_image", mode=proto)
        if ei and ci:
            over = ei.p50_ms / ci.p50_ms - 1
            out.append({"target": f"embed_image (bytes in) within 20 % of clip_image (tensors in), {proto}",
                        "measured": f"{ei.p50_ms:.2f} vs {ci.p50_ms:.2f} ms ({over:+.1%})", "met": over <= 0.20})
    return out


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
        lines.append("")
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
            lines += ["| run | req/s | p50 ms | p99 ms | server queue ms | server compute ms |", "|---|---|---|---|---|---|"]
            for name, r in perf["runs"].items():
                if "throughput_rps" in r:
                    lines.append(f"| {name} | {r['throughput_rps']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                                 f"{r['server_queue_ms']:.2f} | {r['server_compute_ms']:.2f} |")
                else:
                    lines.append(f"| {name} | failed (rc {r['rc']}) | | | | |")
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
