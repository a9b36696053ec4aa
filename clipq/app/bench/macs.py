"""Multiply-accumulates of a network and the CPU's peak, for the achieved-TOPS figures of the bench.

MACs are counted on the ONNX graph itself after shape inference at the benchmarked input shapes:
every MatMul (weights and attention's activation x activation products), Gemm and Conv. The peak is
MACs per cycle per core for the precision the engine computes in, times the cores used, times the
highest clock the OS reports (:func:`max_mhz`: cpufreq's ``cpuinfo_max_freq`` or lscpu's "CPU max
MHz", the boost clock) or, where it reports none (a VM: turbo is not visible from inside), the
``cpu MHz`` of ``/proc/cpuinfo``, which boost may exceed: ``clock_is_max`` says which.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: (precision, ISA flag) -> MACs per cycle per core, best first; what each figure assumes is in NOTES
PEAK_MACS = {
    "int8": (("amx_int8", 1024), ("avx512_vnni", 128), ("avx_vnni", 64), ("avx2", 32)),
    "bf16": (("amx_bf16", 512), ("avx512_bf16", 64), ("avx512f", 32), ("avx2", 16)),
    "fp32": (("avx512f", 32), ("avx2", 16)),
}
NOTES = {
    "amx_int8": "AMX: 1,024 int8 MACs/cycle/core (one TMUL, 16x64 int8 tile products)",
    "avx512_vnni": "AVX-512 VNNI: 64 int8 MACs per vpdpbusd zmm x two FMA ports = 128/cycle/core (a core that "
                   "splits 512-bit ops into two 256-bit halves, as AMD Zen 4 does, issues half of that)",
    "avx_vnni": "AVX-VNNI: 32 int8 MACs per vpdpbusd ymm x two ports = 64/cycle/core",
    "avx2": "AVX2 without VNNI: vpmaddubsw + vpmaddwd + vpaddd per 32 int8 MACs, two ports: assumed 32 int8 "
            "MACs/cycle/core; fp32 FMA 2 x 8 = 16, bf16 runs as fp32",
    "amx_bf16": "AMX-BF16: 512 bf16 MACs/cycle/core",
    "avx512_bf16": "AVX512-BF16: 32 bf16 MACs per vdpbf16ps zmm x two ports = 64/cycle/core (half on 256-bit "
                   "datapaths)",
    "avx512f": "AVX-512 fp32: 16 lanes x two FMA ports = 32 MACs/cycle/core",
}


def graph_macs(path: str | Path, feeds: Mapping[str, np.ndarray]) -> int:
    """MACs of one call of the ONNX graph at ``path`` on inputs shaped like ``feeds``.

    A batch of one is counted at batch 2 and halved (every MAC is per item): ONNX shape inference
    leaves some dims unknown at batch 1 (size-1 broadcasts), which would drop those MatMuls.
    """
    batch = next(iter(feeds.values())).shape[0] if feeds else 0
    if batch == 1:
        return _graph_macs(path, {k: np.concatenate([v, v]) for k, v in feeds.items()}) // 2
    return _graph_macs(path, feeds)


def _graph_macs(path: str | Path, feeds: Mapping[str, np.ndarray]) -> int:
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path))
    for inp in model.graph.input:
        if inp.name in feeds:
            for d, n in zip(inp.type.tensor_type.shape.dim, feeds[inp.name].shape):
                d.ClearField("dim_param")
                d.dim_value = int(n)
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, list[int]] = {i.name: list(i.dims) for i in model.graph.initializer}
    for vi in (*model.graph.value_info, *model.graph.input, *model.graph.output):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if dims and all(d > 0 for d in dims):
            shapes[vi.name] = dims
    total = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        a = shapes.get(node.input[0]) if node.input else None
        if not out or not a:
            continue
        if node.op_type in ("MatMul", "MatMulInteger"):
            total += int(np.prod(out)) * int(a[-1])
        elif node.op_type == "Gemm":
            trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
            total += int(np.prod(out)) * int(a[0] if trans_a else a[-1])
        elif node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in shapes:
            total += int(np.prod(out)) * int(np.prod(shapes[node.input[1]][1:]))
    return total


def max_mhz(cpufreq: str | Path = "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") -> float | None:
    """The CPU's highest (boost) clock in MHz as the OS reports it, or None where it reports none.

    cpufreq's ``cpuinfo_max_freq`` (kHz) first, then lscpu's "CPU max MHz". A VM usually has
    neither: its guest sees only the nominal clock of ``/proc/cpuinfo``.
    """
    try:
        khz = float(Path(cpufreq).read_text().strip())
        if khz > 0:
            return khz / 1000.0
    except (OSError, ValueError):
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, env={"LC_ALL": "C"}).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"^CPU max MHz:\s*([0-9.]+)", out, re.MULTILINE)
    return float(m.group(1)) if m and float(m.group(1)) > 0 else None


def peak(facts: Mapping[str, Any], precision: str, threads: int) -> dict[str, Any]:
    """Peak MAC rate for ``precision`` on ``threads`` threads of this CPU (physical cores used).

    The clock is ``facts["max_mhz"]`` (:func:`max_mhz`, the boost clock: the peak is a true upper
    bound) where known, else ``facts["mhz"]`` (/proc/cpuinfo's ``cpu MHz``: in a VM often the base
    clock, which boost exceeds; a Zen 3 EPYC guest reports 2445 MHz and ran an fp32 graph at 100.3 %
    of the peak computed from it). ``clock_is_max`` says which.
    """
    flags = facts.get("flags") or {}
    per = next(((f, n) for f, n in PEAK_MACS.get(precision, PEAK_MACS["fp32"]) if flags.get(f)), ("scalar", 1))
    tpc = facts.get("threads_per_core") or 1
    cores = max(1, min(threads, facts.get("logical_cpus") or threads) // tpc)
    is_max = bool(facts.get("max_mhz"))
    ghz = (facts.get("max_mhz") or facts.get("mhz") or 0.0) / 1000.0
    macs_per_s = per[1] * cores * ghz * 1e9
    return {"isa": per[0], "macs_per_cycle_per_core": per[1], "cores": cores, "ghz": ghz,
            "peak_tops": 2 * macs_per_s / 1e12, "assumes": NOTES.get(per[0], "scalar code"), "clock_is_max": is_max,
            "clock": "the CPU's max (boost) clock" if is_max else
            "cpu MHz as /proc/cpuinfo reports it, no max clock reported (boost may run above it: over 100 % can happen)"}


def cores_text(facts: Mapping[str, Any]) -> str:
    """Whether the vCPUs are separate cores or hyper-threads of one (as the OS reports the topology)."""
    tpc, n = facts.get("threads_per_core"), facts.get("logical_cpus")
    if tpc == 1:
        return (f"{n} vCPUs on {n} cores, 1 thread per core (lscpu: Thread(s) per core 1); a hypervisor may still "
                "place them on SMT siblings of one host core, which is not visible from inside")
    if tpc:
        return f"{n} vCPUs = {n // tpc} core(s) x {tpc} hyper-threads"
    return f"{n} vCPUs, topology unknown"
