"""``clipq export``: every network to ONNX, checked, optimised where a measurement says so.

For each network: export fp32 -> parity against PyTorch (batch 1, 8 and the largest served
batch) -> optional candidates (transformer-optimizer fusions, int8 recipes, fp16), each checked for
parity and timed interleaved against the fp32 graph -> adopt what passes and is measurably faster
-> record files (with hashes), parity figures and the decisions in the manifest. A graph that
fails parity fails the export with :class:`ParityError`; a candidate that fails is not adopted.
With ``openvino`` the OpenVINO IR and NNCF int8 variants join (:mod:`.openvino`), and every passing
(engine, variant) is timed, each engine in its own process, to record the CPU default
(:mod:`.selection`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipq.runtime import specs
from clipq.runtime.errors import ArtifactError, ClipqError, MissingDependencyError, ParityError
from clipq.runtime.manifest import Manifest, ModelSpec

from .graphs import DEFAULT_OPSET, count_ops, export_onnx
from .optimize import MODEL_TYPES, transformer_optimize
from .parity import FP32, REDUCED, Tolerance, batch_sizes, check_parity
from .quantize import DEFAULT_RECIPES, Int8Recipe, convert_fp16, quantize_int8
from .samples import SampleFactory
from .timing import interleaved, make_session, session_runner
from .variant_gate import task_parity as _task_parity  # the name export_artifacts and the tests use

log = logging.getLogger(__name__)

ONNX_DIR = "onnx"
#: int8 quality a network's chosen recipe should reach (the issue's targets); REDUCED is the floor
INT8_TARGET = {"clip_image": 0.999, "img2prompt_a": 0.999, "clip_text": 0.998, "prompt_text": 0.998, "vqa": 0.998,
               "reading_image": 0.999, "reading_text": 0.998}


#: ``(manifest, {network: variant}) -> {metric: value}`` (see ``ExportOptions.task_metrics``)
TaskMetricsFn = Callable[[Manifest, Mapping[str, str]], Mapping[str, float]]


@dataclass(kw_only=True)
class ExportInputs:
    """Real example inputs: image paths and texts per tokenizer (``clip``, ``lm``, ``prompt``).

    ``images``/``texts`` feed the parity checks; ``calibration_*`` (a disjoint split where there is one)
    feed static int8 calibration.
    """

    images: Sequence[Any] = ()
    texts: Mapping[str, Sequence[str]] = field(default_factory=dict)
    calibration_images: Sequence[Any] = ()
    calibration_texts: Mapping[str, Sequence[str]] = field(default_factory=dict)


@dataclass(kw_only=True)
class ExportOptions:
    """What ``clipq export`` does besides the fp32 graphs.

    Attributes:
        optimize: Try onnxruntime's transformer optimizer; adopt only if parity holds and faster.
        fp16: Write fp16 graphs (for GPUs).
        int8: Write int8 graphs (for CPUs), choosing the recipe per network by measurement. A
            network for which no recipe passes parity gets no int8 graph (and a warning).
        require_int8: Fail with ParityError instead when a network gets no int8 graph, or when the
            task gate rejects the int8 graphs.
        tensorrt: Build TensorRT fp16 engines (only where a GPU and TensorRT are present).
        networks: Export only these (default: every network the artifacts hold).
        opset: ONNX opset (>= 17).
        parity_batches: Batch sizes for parity (default 1, 8 and the largest served batch).
        inputs: Real example inputs (:class:`ExportInputs`) for parity and for int8 calibration;
            synthetic ones when ``None``. The app builds them from a data directory.
        task_metrics: ``(manifest, {network: variant}) -> {metric: value}``: the task metrics of
            a set of graph variants. When given, every int8/fp16 variant is gated on it against fp32
            (at most :data:`MAX_DROP` points lost). The app passes one measured on the user's data, so
            the export itself never reads datasets or runs evaluation.
        threads: onnxruntime threads when timing candidates (default: onnxruntime's).
        int8_recipes: int8 candidates (default: dynamic, dynamic per-channel, static QDQ with data).
        openvino: Also the OpenVINO variants (IR ``ov_fp32``, NNCF ``ov_int8`` on ``inputs`` or the built-in
            real sample), gated like the others; then the CPU default by measurement (:mod:`.selection`).
        openvino_subset_size, selection_batches, selection_rounds: NNCF calibration items; batch sizes
            (default 1 and the served ones) and alternating rounds of the engine timing.
        min_speedup: A candidate must be this much faster than what it replaces to be adopted.
        timing_batch: Batch size at which candidates are timed.
        seed: Seed of the synthetic sample inputs.
    """

    optimize: bool = False
    fp16: bool = False
    int8: bool = False
    require_int8: bool = False
    tensorrt: bool = False
    networks: Sequence[str] | None = None
    opset: int = DEFAULT_OPSET
    parity_batches: Sequence[int] | None = None
    inputs: ExportInputs | None = None
    task_metrics: TaskMetricsFn | None = None
    threads: int | None = None
    int8_recipes: Sequence[Int8Recipe] | None = None
    min_speedup: float = 1.05
    timing_batch: int = 8
    timing_rounds: int = 7
    seed: int = 0
    openvino: bool = False
    openvino_subset_size: int = 64
    selection_batches: Sequence[int] | None = None
    selection_rounds: int = 2


@dataclass
class NetworkReport:
    """What the export did for one network."""

    name: str
    files: dict[str, str] = field(default_factory=dict)  # variant -> relative path
    parity: dict[str, dict[str, Any]] = field(default_factory=dict)
    timing_ms: dict[str, float] = field(default_factory=dict)  # variant/candidate -> p50 at timing batch
    decisions: dict[str, Any] = field(default_factory=dict)
    default_variant: str = "fp32"
    seconds: float = 0.0


@dataclass
class ExportReport:
    """Result of :func:`export_artifacts`."""

    artifacts: Path
    networks: dict[str, NetworkReport] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    task_metrics: dict[str, Any] = field(default_factory=dict)
    tensorrt: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)

    def markdown(self) -> str:
        """The parity table (Markdown): one row per network and variant."""
        rows = ["| network | variant | max abs diff | min cosine | batches | p50 ms @ timing batch | default |",
                "|---|---|---|---|---|---|---|"]
        for n in self.networks.values():
            for v, p in n.parity.items():
                if not p.get("adopted", True):
                    continue
                t = n.timing_ms.get(v)
                rows.append(
                    f"| {n.name} | {v}{' (' + p['recipe'] + ')' if p.get('recipe') else ''} | {p['max_abs']:.2e} | "
                    f"{p['min_cos']:.6f} | {', '.join(p['batches'])} | {f'{t:.1f}' if t else '-'} | "
                    f"{'yes' if v == n.default_variant else ''} |"
                )
        out = "\n".join(rows)
        variants = [k for k in self.task_metrics if k not in ("delta", "rejected")]
        if variants:
            metrics = list(self.task_metrics["fp32"])
            out += "\n\n| embedded task | " + " | ".join(variants) + " |\n|---|" + "---|" * len(variants) + "\n"
            for name in metrics:
                vals = [self.task_metrics[v].get(name) for v in variants]
                out += f"| {name} | " + " | ".join("-" if x is None else f"{x:.2f}" for x in vals) + " |\n"
        for v, r in self.task_metrics.get("rejected", {}).items():
            out += f"\n{v} not deployed: it loses more than the task gate allows ({r['why']}); fp32 serves\n"
        return out


def build_spec(name: str, m: Manifest) -> ModelSpec:
    """The network's spec from ``clipq.runtime.specs``, sized from the manifest.

    A spec already in the manifest keeps its batch limits (a user may have tuned them).

    Raises:
        ArtifactError: the manifest lacks the sizes the spec needs.
    """
    try:
        size = int(m.preprocessing.get("size", 0))
        d_clip = int(m.dims.get("clip_embed", 0))
        d_prompt = int(m.dims.get("prompt_embed", 384))
        builders: dict[str, Callable[[], ModelSpec]] = {
            specs.CLIP_IMAGE: lambda: specs.clip_image_spec(size, d_clip),
            specs.CLIP_TEXT: lambda: specs.clip_text_spec(d_clip),
            specs.READING_IMAGE: lambda: specs.clip_image_spec(size, d_clip, name=specs.READING_IMAGE),
            specs.READING_TEXT: lambda: specs.clip_text_spec(d_clip, name=specs.READING_TEXT),
            specs.VQA: lambda: specs.vqa_spec(d_clip, len(m.answer_vocab)),
            specs.IMG2PROMPT_A: lambda: specs.img2prompt_a_spec(size, d_prompt),
            specs.ENSEMBLE_HEAD: lambda: specs.ensemble_head_spec(d_prompt),
            specs.PROMPT_TEXT: lambda: specs.prompt_text_spec(d_prompt),
        }
        spec = builders[name]()
    except KeyError:
        raise ArtifactError(f"unknown network {name!r}; known: {', '.join(specs.NETWORKS)}") from None
    if any(d == 0 for t in [*spec.inputs, *spec.outputs] for d in t.shape):
        raise ArtifactError(f"{m.root}: the manifest lacks sizes for {name} (preprocessing.size, dims, answer_vocab)")
    old = m.models.get(name)
    if old is not None:
        spec.max_batch_size = old.max_batch_size
        spec.preferred_batch_sizes = list(old.preferred_batch_sizes)
    return spec


def _torch_runner(module: Any, spec: ModelSpec) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    import torch

    def run(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in spec.inputs]
            return module(*args).float().numpy()

    return run


def _timing_feeds(factory: SampleFactory, spec: ModelSpec, batch: int) -> dict[str, np.ndarray]:
    return factory.inputs(spec, min(batch, spec.max_batch_size), offset=991, long_texts=False)


def _time(paths: Mapping[str, Path], feeds: Mapping[str, np.ndarray], opts: ExportOptions) -> dict[str, float]:
    """p50 ms of each graph, interleaved."""
    runs = {k: session_runner(make_session(p, opts.threads)) for k, p in paths.items()}
    secs = interleaved({k: (lambda r=r: r(feeds)) for k, r in runs.items()}, rounds=opts.timing_rounds,
                       warmup=1, budget_s=30.0)
    return {k: float(np.median(v) * 1000.0) for k, v in secs.items()}


class _Exporter:
    def __init__(self, m: Manifest, modules: Mapping[str, Any], opts: ExportOptions):
        self.m, self.modules, self.opts = m, modules, opts
        self.onnx_dir = m.root / ONNX_DIR
        # everything is written to a staging directory first and moved into onnx/ only when every
        # network has passed: a failed export leaves the previous graphs and manifest untouched
        self.stage_dir = self.onnx_dir / ".staging"
        self.cand_dir = self.stage_dir / "candidates"
        self.staged: dict[str, Path] = {}
        self.obsolete: set[str] = set()
        real = opts.inputs
        images = list(real.images) if real else []
        texts = {k: list(v) for k, v in real.texts.items()} if real else {}
        self.calibration_pool: tuple[list[Any], dict[str, list[str]]] | None = None
        if real and real.calibration_images:
            self.calibration_pool = (list(real.calibration_images),
                                     {k: list(v) for k, v in real.calibration_texts.items()})
        # the VQA graph's image_embeds input comes from the CLIP tower, as in serving
        embedder: Callable[[np.ndarray], np.ndarray] | None = None
        if "clip_image" in modules:
            tower = _torch_runner(modules["clip_image"], build_spec("clip_image", m))

            def embedder(pixel_values: np.ndarray) -> np.ndarray:
                return tower({"pixel_values": pixel_values})

        self.factory = SampleFactory(m, seed=opts.seed, images=images, texts=texts, image_embedder=embedder)
        self.embedder = embedder
        self._ov_sample: Any = None

    # -- one network ---------------------------------------------------------------------------
    def run(self, name: str) -> NetworkReport:
        t0 = time.perf_counter()
        opts, m = self.opts, self.m
        module = self.modules[name]
        spec = build_spec(name, m)
        rep = NetworkReport(name)
        self._forget(name)
        fp32 = self.stage_dir / f"{name}.onnx"
        files = export_onnx(module, spec, fp32, self.factory.inputs(spec, 2, offset=5), opts.opset)
        spec.file = self._record(fp32)
        for extra in files[1:]:
            self._record(extra)
        rep.files["fp32"] = spec.file

        # parity inputs and PyTorch references, computed once for every variant
        torch_run = _torch_runner(module, spec)
        samples = {b: self.factory.inputs(spec, b, offset=b * 7) for b in batch_sizes(spec.max_batch_size, opts.parity_batches)}
        reference = {b: torch_run(x) for b, x in samples.items()}
        out_dim = spec.outputs[0].shape[-1]
        got_dim = next(iter(reference.values())).shape[-1]
        if out_dim != got_dim:
            raise ArtifactError(f"{name}: the module gives {got_dim} outputs, the spec declares {out_dim}")

        def parity(path: Path, variant: str, tol: Tolerance, raise_on_fail: bool = True) -> dict[str, Any]:
            run = session_runner(make_session(path, opts.threads))
            return check_parity(name, variant, run, samples, reference, tol, raise_on_fail=raise_on_fail)

        rep.parity["fp32"] = parity(fp32, "fp32", FP32)
        base, base_variant = fp32, "fp32"
        timing_feeds = _timing_feeds(self.factory, spec, opts.timing_batch)
        ops = count_ops(fp32)
        n_matmul = ops.get("MatMul", 0) + ops.get("Gemm", 0)
        adopted: dict[str, Path] = {"fp32": fp32}

        if opts.optimize and name in MODEL_TYPES:
            base, base_variant = self._try_optimizer(name, spec, fp32, parity, timing_feeds, rep)
            adopted[base_variant] = base
        if opts.int8 and n_matmul:
            int8 = self._try_int8(name, spec, base, parity, timing_feeds, rep, dict(adopted))
            if int8 is not None:
                adopted["int8"] = int8
        elif opts.int8:
            rep.decisions["int8"] = "skipped: the graph has no MatMul weights to quantise"
        if opts.fp16:
            p16 = self.stage_dir / f"{name}.fp16.onnx"
            convert_fp16(fp32, p16)
            rep.parity["fp16"] = parity(p16, "fp16", REDUCED)
            spec.variants["fp16"] = self._record(p16)
            rep.files["fp16"] = spec.variants["fp16"]
        if opts.openvino:
            self._openvino(name, spec, fp32, samples, reference, rep, bool(n_matmul), self._held_out(spec, torch_run))

        # the CPU default: the fastest adopted graph of the last interleaved timing, and only if
        # it beats fp32 by the required margin
        ms = {k: rep.timing_ms[k] for k in adopted if k in rep.timing_ms}
        if "int8" in ms and not rep.parity["int8"]["meets_target"]:
            ms.pop("int8")  # kept as a variant, but not served by default below its quality target
        if len(ms) > 1:
            best = min(ms, key=lambda k: ms[k])
            if ms[best] * opts.min_speedup <= ms["fp32"]:
                rep.default_variant = best
            rep.decisions["default"] = {"p50_ms": ms, "chosen": rep.default_variant,
                                        "batch": int(timing_feeds[spec.inputs[0].name].shape[0])}
        spec.default_variant = rep.default_variant
        spec.parity = rep.parity
        spec.meta = {**spec.meta, "export": {"opset": opts.opset, "exporter": "torch.onnx (TorchScript, dynamo=False)",
                                             "decisions": rep.decisions, "timing_ms": rep.timing_ms,
                                             "threads": opts.threads}}
        m.models[name] = spec
        rep.seconds = time.perf_counter() - t0
        return rep

    def _record(self, staged: Path, subdir: str = ONNX_DIR) -> str:
        """List a staged file in the manifest under its final name (``<subdir>/<file>``)."""
        rel = f"{subdir}/{staged.name}"
        self.m.record_file(rel, staged)
        self.staged[rel] = staged
        return rel

    def _forget(self, name: str) -> None:
        """Unlist the files of an earlier export of ``name``; they are deleted at commit, so stale
        variants do not survive a successful export and a failed one changes nothing."""
        from .openvino import OV_DIR

        old = self.m.models.pop(name, None)
        stems = (f"{ONNX_DIR}/{name}.onnx", f"{ONNX_DIR}/{name}.", f"{OV_DIR}/{name}.")
        rels = [k for k in self.m.files if k == stems[0] or k.startswith(stems[1:])]
        if old is not None:
            rels += list(old.variants.values())
        for rel in rels:
            self.m.files.pop(rel, None)
            self.obsolete.add(rel)

    def commit(self) -> None:
        """Move the staged graphs into onnx/ and delete the obsolete ones."""
        for rel, path in self.staged.items():
            dst = self.m.root / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dst)
        for rel in self.obsolete - set(self.staged):
            (self.m.root / rel).unlink(missing_ok=True)
        self.staged.clear()

    def _try_optimizer(self, name: str, spec: ModelSpec, fp32: Path, parity: Callable[..., dict[str, Any]],
                       feeds: Mapping[str, np.ndarray], rep: NetworkReport) -> tuple[Path, str]:
        self.cand_dir.mkdir(parents=True, exist_ok=True)
        cand = self.cand_dir / f"{name}.opt.onnx"
        model_type = MODEL_TYPES[name]
        decision: dict[str, Any] = {"model_type": model_type}
        try:
            decision["fused"] = transformer_optimize(fp32, cand, model_type)
        except Exception as e:  # noqa: BLE001 - the optimizer fails on patterns it does not know
            decision.update(adopted=False, reason=f"optimizer failed: {e}")
            rep.decisions["optimize"] = decision
            return fp32, "fp32"
        p = parity(cand, "opt", FP32, raise_on_fail=False)
        decision["parity"] = {"max_abs": p["max_abs"], "min_cos": p["min_cos"], "passed": p["passed"]}
        if not p["passed"]:
            decision.update(adopted=False, reason="fails parity against PyTorch")
            log.warning("%s: optimizer (%s) output differs from PyTorch (min cos %.4f): not adopted",
                        name, model_type, p["min_cos"])
        else:
            ms = _time({"fp32": fp32, "opt": cand}, feeds, self.opts)
            decision["p50_ms"] = ms
            rep.timing_ms.update(ms)
            if ms["opt"] * self.opts.min_speedup <= ms["fp32"]:
                dst = self.stage_dir / f"{name}.opt.onnx"
                shutil.move(str(cand), dst)
                spec.variants["opt"] = self._record(dst)
                rep.files["opt"] = spec.variants["opt"]
                rep.parity["opt"] = p
                decision.update(adopted=True)
                rep.decisions["optimize"] = decision
                return dst, "opt"
            decision.update(adopted=False, reason=f"not faster ({ms['opt']:.1f} vs {ms['fp32']:.1f} ms)")
        cand.unlink(missing_ok=True)
        rep.decisions["optimize"] = decision
        return fp32, "fp32"

    def _held_out(self, spec: ModelSpec, torch_run: Callable[[Mapping[str, np.ndarray]], np.ndarray]) -> Any:
        """Photos the calibration never saw and PyTorch's outputs on them, for an image graph whose
        parity images are synthetic (no ``--data``); None otherwise or without scikit-image."""
        from .calibration import held_out_photos

        if self.factory.images or "pixel_values" not in {t.name for t in spec.inputs}:
            return None
        try:
            photos = held_out_photos()
        except MissingDependencyError:
            return None
        n = min(len(photos), max(spec.max_batch_size, 1))
        feeds = SampleFactory(self.m, seed=self.opts.seed + 3, images=photos).inputs(spec, n)
        return feeds, torch_run(feeds)

    def _openvino(self, name: str, spec: ModelSpec, fp32: Path, samples: Mapping[int, Mapping[str, np.ndarray]],
                  reference: Mapping[int, np.ndarray], rep: NetworkReport, int8: bool, held_out: Any = None) -> None:
        from .calibration import CalibrationSample
        from .openvino import OV_DIR, openvino_variants  # imports openvino only when asked for

        def items() -> tuple[list[dict[str, np.ndarray]], str]:
            if self._ov_sample is None:  # the user's data, else the built-in real photos and sentences
                self._ov_sample = CalibrationSample.from_inputs(self.opts.inputs) or CalibrationSample.builtin()
            s = self._ov_sample
            f = SampleFactory(self.m, seed=self.opts.seed + 2, images=s.images, texts=s.texts, image_embedder=self.embedder)
            return [f.inputs(spec, 1, offset=i) for i in range(self.opts.openvino_subset_size)], s.source

        res = openvino_variants(name, fp32, self.stage_dir / OV_DIR, samples, reference, items,
                                target=INT8_TARGET.get(name, 0.999), threads=self.opts.threads, int8=int8,
                                held_out=held_out)
        for variant, (xml, weights) in res.files.items():
            rep.files[variant] = spec.variants[variant] = self._record(xml, OV_DIR)
            self._record(weights, OV_DIR)
        rep.parity.update(res.parity)
        rep.decisions["openvino"], spec.meta["openvino"] = res.decisions, res.meta

    def _calibration(self, spec: ModelSpec, n_batches: int = 8, batch: int = 4) -> list[dict[str, np.ndarray]] | None:
        if self.calibration_pool is None:
            return None
        images, texts = self.calibration_pool
        f = SampleFactory(self.m, seed=self.opts.seed + 1, images=images, texts=texts, image_embedder=self.embedder)
        return [f.inputs(spec, batch, offset=i * batch) for i in range(n_batches)]

    def _try_int8(self, name: str, spec: ModelSpec, base: Path, parity: Callable[..., dict[str, Any]],
                  feeds: Mapping[str, np.ndarray], rep: NetworkReport, references: Mapping[str, Path]) -> Path | None:
        self.cand_dir.mkdir(parents=True, exist_ok=True)
        recipes = list(self.opts.int8_recipes or DEFAULT_RECIPES)
        calibration = self._calibration(spec) if any(r.static for r in recipes) else None
        target = INT8_TARGET.get(name, REDUCED.min_cos)
        cands: dict[str, Path] = {}
        results: dict[str, Any] = {}
        for r in recipes:
            if r.static and calibration is None:
                results[r.name] = {"skipped": "static quantisation needs --data for calibration"}
                continue
            if not r.static and any(not results[k]["recipe"]["static"] for k in cands):
                # dynamic graphs depend on their batch and are never the default: one opt-in is enough
                # (the other recipes cost about 15 s each on a SigLIP-base tower at import)
                results[r.name] = {"skipped": "a dynamic recipe already passed; dynamic graphs are opt-in only"}
                continue
            path = self.cand_dir / f"{name}.{r.name}.int8.onnx"
            try:
                quantize_int8(base, path, r, calibration=calibration, input_names=[t.name for t in spec.inputs])
            except Exception as e:  # noqa: BLE001 - report and try the next recipe
                results[r.name] = {"skipped": f"quantisation failed: {e}"}
                continue
            p = parity(path, f"int8/{r.name}", REDUCED, raise_on_fail=False)
            # a recipe whose outputs move with the batch (dynamic per-batch scales) is kept as a
            # variant but never served by default: see parity.BATCH_INVARIANCE_MAX_REL
            results[r.name] = {"recipe": r.to_dict(), "parity": p,
                               "meets_target": p["min_cos"] >= target and p["batch_invariant"]}
            if p["passed"]:
                cands[r.name] = path
        if not cands:
            best = max((v["parity"]["min_cos"] for v in results.values() if "parity" in v), default=float("nan"))
            msg = (f"{name}: no int8 recipe reaches cosine {REDUCED.min_cos} against PyTorch (best {best:.4f}); "
                   "no int8 graph for it")
            if self.opts.require_int8:
                raise ParityError(msg)
            log.warning("%s", msg)
            rep.decisions["int8"] = {"rejected": msg, "candidates": _candidate_summary(results)}
            return None
        # the fastest recipe that meets the network's quality target (and batch invariance); if
        # none does, the most accurate one, kept as an opt-in variant and never timed: it can not
        # become the default (see run()), and timing it was a large part of an import's minutes
        good = [k for k in cands if results[k]["meets_target"]]
        if good:
            # the fp32 (and optimised) graphs run in the same interleaved timing: one comparison
            ms = _time({**references, **{k: cands[k] for k in good}}, feeds, self.opts)
            for k in good:
                results[k]["p50_ms"] = ms[k]
            chosen = min(good, key=lambda k: ms[k])
            rep.timing_ms.update({k: ms[k] for k in references})
            rep.timing_ms["int8"] = ms[chosen]
        else:
            chosen = max(cands, key=lambda k: results[k]["parity"]["min_cos"])
        dst = self.stage_dir / f"{name}.int8.onnx"
        shutil.move(str(cands[chosen]), dst)
        for p in cands.values():
            p.unlink(missing_ok=True)
        spec.variants["int8"] = self._record(dst)
        rep.files["int8"] = spec.variants["int8"]
        rep.parity["int8"] = {**results[chosen]["parity"], "recipe": chosen, "target_min_cos": target,
                              "meets_target": bool(results[chosen]["meets_target"])}
        rep.decisions["int8"] = {"candidates": _candidate_summary(results), "chosen": chosen, "from": base.name,
                                 "target_min_cos": target}
        return dst


def _candidate_summary(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per int8 recipe: what was tried, its worst cosine and timing (full parity figures omitted)."""
    out: dict[str, Any] = {}
    for name, r in results.items():
        row = {k: v for k, v in r.items() if k != "parity"}
        if "parity" in r:
            row["min_cos"] = r["parity"]["min_cos"]
            row["batch_invariance"] = r["parity"].get("batch_invariance")
        out[name] = row
    return out


def export_artifacts(artifacts: str | os.PathLike[str], options: ExportOptions | None = None, *,
                     modules: Mapping[str, Any] | None = None) -> ExportReport:
    """Export every network of an artifact directory and record the result in its manifest.

    Args:
        artifacts: The artifact directory (written by ``clipq train`` or ``build_random_artifacts``).
        options: What to do besides fp32 graphs (see :class:`ExportOptions`).
        modules: The PyTorch networks by name (default: ``clipq.models.io.load_for_export``).

    Returns:
        An :class:`ExportReport` (also summarised in the manifest).

    Raises:
        ArtifactError: the artifacts are incomplete, or the exporter failed.
        ParityError: an exported fp32 or fp16 graph does not reproduce PyTorch within tolerance, or
            (with ``require_int8``) no int8 recipe passes for a network or the int8 graphs lose more
            than a point of an embedded-task metric (any other variant that does is removed and the
            export goes on). Nothing is changed on disk in the first two cases.
    """
    opts = options or ExportOptions()
    m = Manifest.load(artifacts)
    if modules is None:
        from clipq.models.io import load_for_export

        modules = load_for_export(artifacts)
    wanted = list(opts.networks or [n for n in specs.NETWORKS if n in modules])
    report = ExportReport(Path(artifacts))
    for n in wanted:
        if n not in modules:
            report.skipped[n] = "no trained checkpoint in the artifacts"
    ex = _Exporter(m, modules, opts)
    try:
        for n in wanted:
            if n in modules:
                log.info("exporting %s", n)
                report.networks[n] = ex.run(n)
        ex.commit()
    finally:
        shutil.rmtree(ex.stage_dir, ignore_errors=True)
    if opts.task_metrics is not None and (opts.int8 or opts.fp16 or opts.openvino):
        try:
            report.task_metrics = _task_parity(m, opts, report)
        except ParityError:
            m.save()  # the failing variant was removed: keep the artifact consistent, then fail
            raise
    if opts.openvino:
        from .selection import select_engines

        m.save()  # the timing workers read the artifacts from disk
        report.selection = select_engines(m, list(report.networks), threads=opts.threads, inputs=opts.inputs,
                                          batches=opts.selection_batches, rounds=opts.selection_rounds)
    if opts.tensorrt:
        from .tensorrt import build_engines

        report.tensorrt = build_engines(m, list(report.networks))
        m.extra["tensorrt"] = report.tensorrt
    m.extra["export"] = {
        "networks": list(report.networks), "skipped": report.skipped, "task_metrics": report.task_metrics,
        "options": {"optimize": opts.optimize, "fp16": opts.fp16, "int8": opts.int8, "tensorrt": opts.tensorrt,
                    "openvino": opts.openvino, "opset": opts.opset, "threads": opts.threads},
    }
    m.save()
    return report


__all__ = ["ClipqError", "ExportInputs", "ExportOptions", "TaskMetricsFn", "ExportReport", "NetworkReport", "build_spec", "export_artifacts"]
