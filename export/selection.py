"""The CPU default of each network, chosen by measurement on the machine at hand.

Every passing (engine, variant) of a network — onnxruntime fp32 / int8 (/ optimised), OpenVINO IR /
NNCF int8 — is timed at the served batch sizes, each engine in its own worker process
(:class:`~clipq.export.timing.ProcessEngine`) through the runtime's own backend with the runtime's
settings, in alternating rounds. The score of a candidate is the geometric mean over the batch sizes
of its best per-round median latency; the lowest wins and is recorded as
``spec.meta["cpu_default"] = {"engine", "variant", "ms", "measured_on": {cpu, flags, threads, ...}}``,
which :func:`clipq.runtime.connect` then opens (where the host's CPU flags match). ``clipq export
--openvino`` runs this at the end; ``clipq tune-engines ARTIFACTS`` re-runs it on a deployment host.

Torch-free: a deployment host needs only the runtime (and scikit-image for the built-in photos;
without it the timing images are synthetic, which changes nothing about the speed of a graph).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipq.runtime.backends.common import cpu_facts
from clipq.runtime.engines import ENGINES, RETUNE_COMMAND, engine_for_variant
from clipq.runtime.errors import ArtifactError
from clipq.runtime.manifest import Manifest, ModelSpec
from clipq.runtime.records import CpuDefault

from .parity import batch_sizes
from .samples import SampleFactory
from .timing import ProcessEngine, alternating, completed

log = logging.getLogger(__name__)

#: variants never timed for the CPU default: fp16 is the GPU variant (it runs at fp32 speed on CPUs)
NOT_ON_CPU = ("fp16",)


def candidates(spec: ModelSpec) -> list[tuple[str, str]]:
    """The (engine, variant) pairs that may serve ``spec`` on a CPU.

    fp32 always; every other variant that passed its gates (an int8 graph kept below its quality
    target, or whose outputs depend on the batch, is opt-in only, never a default) and whose engine
    is installed here.
    """
    out = [("onnxruntime", "fp32")]
    for v in spec.variants:
        if v in NOT_ON_CPU:
            continue
        par = spec.parity.get(v) or {}
        if par and not (par.get("meets_target", True) and par.get("batch_invariant", True)):
            continue
        e = engine_for_variant(v)
        if e.installed:
            out.append((e.name, v))
    return out


def backend_runner(artifacts: str, network: str, engine: str, variant: str, threads: int | None = None) -> Any:
    """Worker factory: the runtime's backend for one network and variant, as ``connect`` would open it."""
    from clipq.runtime.engines import open_backend

    backend = open_backend(engine, artifacts, variant={network: variant}, threads=threads)
    out = backend.spec(network).outputs[0].name
    info: dict[str, Any] = {"engine": engine, "variant": variant}
    engine_info = getattr(backend, "engine_info", None)  # OpenVINO's says the precision it compiled in
    if engine_info is not None:
        info.update(engine_info(network))

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return backend.infer(network, feeds)[out]

    return run, info


def timing_sample(inputs: Any = None) -> tuple[list[Any], dict[str, list[str]]]:
    """Images and texts for timing: the user's, else the built-in real sample (photos where available)."""
    from clipq.runtime.errors import MissingDependencyError

    from .calibration import CalibrationSample

    s = CalibrationSample.from_inputs(inputs)
    if s is None:
        try:
            s = CalibrationSample.builtin(per_photo=1)
        except MissingDependencyError:
            s = CalibrationSample.texts_only()
    return list(s.images), {k: list(v) for k, v in s.texts.items()}


def _score(ms: Mapping[int, float]) -> float:
    return math.exp(sum(math.log(max(v, 1e-9)) for v in ms.values()) / max(len(ms), 1))


#: a candidate over this many times slower than the fastest at a batch of the first round is not
#: timed further. On a geometric mean over three batches it could still win only by being over 1.4x
#: faster than the leader at both others; the ratio between two engines moved by 30 % at most from
#: batch to batch in the CLIP ViT-B/32 selection (onnxruntime fp32 / OpenVINO int8 3.1-3.7x, the
#: OpenVINO IR 1.4-1.8x; 2-core AMD EPYC Zen 5). It saves the slowest cells, onnxruntime fp32 at the
#: largest batch above all (about 20 s of a SigLIP-base import on 2 cores)
DROP_OVER = 2.0


def select_network(m: Manifest, name: str, *, threads: int | None = None, batches: Sequence[int] | None = None,
                   rounds: int = 2, calls: int = 5, budget_s: float = 3.0, inputs: Any = None,
                   work: Path | None = None, drop_over: float | None = DROP_OVER) -> dict[str, Any]:
    """Time every candidate of one network in its own process and return the record of the fastest.

    ``drop_over``: see :data:`DROP_OVER` (None times every candidate at every batch).

    Returns:
        The ``cpu_default`` record (also set in ``m.models[name].meta``; the caller saves).
    """
    spec = m.model(name)
    cands = candidates(spec)
    sizes = batch_sizes(spec.max_batch_size, batches)
    images, texts = timing_sample(inputs)
    factory = SampleFactory(m, seed=3, images=images, texts=texts)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        feeds: dict[int, str] = {}
        for b in sizes:
            path = Path(tmp) / f"{name}.b{b}.npz"
            np.savez(path, **factory.inputs(spec, b, offset=17, long_texts=False))
            feeds[b] = str(path)
        workers: dict[str, ProcessEngine] = {}
        errors: dict[str, str] = {}
        try:
            for e, v in cands:
                key = f"{e}/{v}"
                try:
                    workers[key] = ProcessEngine("clipq.export.selection:backend_runner",
                                                 {"artifacts": str(m.root), "network": name, "engine": e,
                                                  "variant": v, "threads": threads}, name=f"{name} {key}")
                except Exception as err:  # noqa: BLE001 - a candidate that cannot start is not chosen
                    errors[key] = str(err)
                    log.warning("%s: %s could not be timed: %s", name, key, err)
            secs, dropped = completed(alternating(workers, feeds, rounds=rounds, calls=calls, budget_s=budget_s,
                                                  drop_over=drop_over))
            info = {k: w.info for k, w in workers.items()}
        finally:
            for w in workers.values():
                w.close()
    if not secs:
        raise ArtifactError(f"{name}: no engine could be timed: {errors}")
    # per candidate and batch: the best of the per-round medians (a noisy neighbour only slows a round)
    ms = {k: {b: float(min(np.median(r) for r in per[b]) * 1e3) for b in sizes} for k, per in secs.items()}
    scores = {k: _score(v) for k, v in ms.items()}
    best = min(scores, key=lambda k: scores[k])
    engine, variant = best.split("/", 1)
    facts = cpu_facts(threads)
    facts["versions"] = _versions()
    record = CpuDefault(engine, variant, measured_on=facts, precision=info.get(best, {}).get("precision"), details={
        "ms": {k: {str(b): round(x, 4) for b, x in v.items()} for k, v in ms.items()},
        "score_ms": {k: round(x, 4) for k, x in scores.items()},
        "batches": sizes, "rounds": rounds, "not_timed": errors,
        "dropped": {k: {"ms": {str(b): x for b, x in v.items()},
                        "why": f"over {drop_over}x the fastest at batch {max(v)} in the first round"}
                    for k, v in dropped.items()},
        "method": "each engine in its own process, alternating rounds; best per-round median; geometric mean over batches",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "remeasure": RETUNE_COMMAND.format(root=m.root),
    })
    record.store(spec)
    log.info("%s: CPU default %s (%s)%s", name, best,
             ", ".join(f"{k} {scores[k]:.2f} ms" for k in sorted(scores, key=scores.get)),
             "".join(f"; {k} dropped: {max(v.values()):.2f} ms at batch {max(v)}" for k, v in dropped.items()))
    return record.to_dict()


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("onnxruntime", "openvino", "nncf"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def select_engines(m: Manifest, networks: Sequence[str] | None = None, *, threads: int | None = None,
                   batches: Sequence[int] | None = None, rounds: int = 2, calls: int = 5, budget_s: float = 3.0,
                   inputs: Any = None, save: bool = True, drop_over: float | None = DROP_OVER) -> dict[str, Any]:
    """:func:`select_network` for each network with a graph; saves the manifest.

    Args:
        m: The loaded manifest (its graphs on disk).
        networks: Which (default: every network with a graph).
        threads: Threads of every engine (default: the engines' own default, every core).
        batches: Batch sizes (default 1, 8 and the largest served batch).
        rounds, calls, budget_s: Alternating rounds; calls and seconds per (engine, batch) cell.
        drop_over: See :data:`DROP_OVER`.
        inputs: Real example inputs (:class:`~clipq.export.pipeline.ExportInputs`) for the timing feeds.
        save: Write the manifest afterwards.

    Returns:
        network -> its ``cpu_default`` record.
    """
    if "openvino" in ENGINES and not ENGINES["openvino"].installed:
        log.warning("openvino is not installed: only onnxruntime variants are timed (pip install 'clipq[openvino]')")
    names = [n for n in (networks or list(m.models)) if n in m.models and m.models[n].file]
    out = {n: select_network(m, n, threads=threads, batches=batches, rounds=rounds, calls=calls, budget_s=budget_s,
                             inputs=inputs, drop_over=drop_over) for n in names}
    if save:
        m.save()
    return out


def markdown(records: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per network and candidate: ms per batch, the score, which won."""
    lines = ["| network | engine/variant | " + "ms per batch | score ms | chosen |", "|---|---|---|---:|---|"]
    for net, r in records.items():
        for k, per in r["ms"].items():
            cells = ", ".join(f"b{b} {v:.2f}" for b, v in per.items())
            won = "**yes**" if k == f"{r['engine']}/{r['variant']}" else ""
            lines.append(f"| {net} | {k} | {cells} | {r['score_ms'][k]:.2f} | {won} |")
    return "\n".join(lines) + "\n"
