"""OpenVINO variants of one network: the IR of the fp32 graph and NNCF post-training int8.

- ``ov_fp32``: ``openvino.convert_model`` of the fp32 ONNX graph, saved with fp32 weights. It is
  checked in bf16 where this CPU runs bf16 natively (OpenVINO's default there), and in f32 when bf16
  misses the network's target or the CPU has no bf16; the precision that passed is recorded
  (``spec.meta["openvino"]["ov_fp32"]["precision"]``) and the runtime uses bf16 only where it was
  checked.
- ``ov_int8``: ``nncf.quantize(model, nncf.Dataset(...), model_type=nncf.ModelType.TRANSFORMER,
  subset_size=...)`` on real inputs (the user's ``--data``, else the built-in sample of
  :mod:`.calibration`), recipes tried in the order of :data:`DEFAULT_NNCF_RECIPES`: min-max, then
  SmoothQuant (alpha 0.95 on MatMuls), both with the tower's ends (patch embedding, pooling head,
  projections) left in float, then min-max with the transformer MLP output layers in float too
  (ignored scope). The first that meets the network's cosine target against PyTorch is kept; all
  tried are recorded.

The gates are the pipeline's: cosine against fp32 PyTorch at the parity batches (0.999 for the image
towers, 0.998 for text; :func:`clipq.export.parity.check_parity`) and, where the parity images are
synthetic, on photos the calibration never saw (:func:`clipq.export.calibration.held_out_photos`);
then the task metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipq.runtime.errors import MissingDependencyError, ParityError

from .parity import REDUCED, check_parity, compare
from .quantize import FFN_OUT

log = logging.getLogger(__name__)

OV_DIR = "openvino"
Runner = Callable[[Mapping[str, np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class NncfRecipe:
    """One NNCF int8 recipe.

    Attributes:
        name: Short name for reports and the manifest.
        smooth_quant: SmoothQuant alpha for MatMuls (``-1`` turns SmoothQuant off).
        ignored: Regexes over node names kept in float (NNCF ``IgnoredScope(patterns=...)``).
    """

    name: str
    smooth_quant: float = 0.95
    ignored: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "smooth_quant": self.smooth_quant, "ignored": list(self.ignored)}


#: the ends of a tower: the patch embedding (a convolution over raw pixels), the pooling head (SigLIP's
#: attention-pooling block, the text tower's head) and CLIP's output projections: 1-2 % of the
#: multiply-adds of a base tower, and where per-tensor int8 loses most
ENDS = r"patch_embedding|/head/|_projection/"

MINMAX_ENDS_FLOAT = NncfRecipe("minmax_ends_float", smooth_quant=-1.0, ignored=(f".*(?:{ENDS}).*",))
SMOOTH_QUANT_ENDS_FLOAT = NncfRecipe("smooth_quant_ends_float", ignored=(f".*(?:{ENDS}).*",))
MINMAX_ENDS_FFN_FLOAT = NncfRecipe("minmax_ends_ffn_float", smooth_quant=-1.0, ignored=(f".*(?:{ENDS}|{FFN_OUT}).*",))
#: tried in this order, the first that meets the gates kept. Measured on a 2-core AMD EPYC (Zen 5),
#: NNCF 3.4, bf16 execution, cosine against fp32 on the synthetic parity images / on photos:
#: SigLIP-base image tower: smooth_quant 0.972 / 0.9987, minmax 0.9985 / 0.9986, smooth_quant_ends_float
#: 0.987 / 0.9997, minmax_ends_float 0.9996 / 0.9991 (passes), ffn outputs in float too: no better
#: and 30 % slower. CLIP ViT-B/32 image: minmax_ends_float 0.9999 / 0.9986, smooth_quant_ends_float
#: 0.9999 / 0.9996 (passes). Text towers (CLIP, SigLIP) fail SmoothQuant (0.9955, 0.925) and pass
#: min-max. Min-max first: it calibrates in two thirds of SmoothQuant's time (13 vs 21 s on the SigLIP
#: image tower) and passes three of those four towers. Leaving the ends in float costs no measurable speed.
DEFAULT_NNCF_RECIPES: tuple[NncfRecipe, ...] = (MINMAX_ENDS_FLOAT, SMOOTH_QUANT_ENDS_FLOAT, MINMAX_ENDS_FFN_FLOAT)


def _ov() -> Any:
    try:
        import openvino
    except ImportError as e:
        raise MissingDependencyError("openvino", "openvino", "OpenVINO export") from e
    return openvino


def _nncf() -> Any:
    try:
        import nncf
    except ImportError as e:
        raise MissingDependencyError("nncf", "train", "NNCF int8 quantisation") from e
    return nncf


def to_ir(onnx_path: str | Path, xml_path: str | Path) -> Path:
    """The fp32 ONNX graph as OpenVINO IR (``.xml`` + ``.bin``, fp32 weights: no fp16 compression)."""
    ov = _ov()
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)
    return xml_path


def quantize_ir(src: str | Path, xml_path: str | Path, items: Sequence[Mapping[str, np.ndarray]],
                recipe: NncfRecipe = MINMAX_ENDS_FLOAT, subset_size: int | None = None) -> Path:
    """NNCF post-training int8 of an IR or ONNX file, calibrated on ``items`` (dicts of named arrays).

    Raises:
        ValueError: no calibration items.
    """
    if not items:
        raise ValueError("NNCF int8 needs calibration items (real inputs)")
    ov, nncf = _ov(), _nncf()
    model = ov.Core().read_model(str(src))
    kw: dict[str, Any] = {}
    if recipe.ignored:
        kw["ignored_scope"] = nncf.IgnoredScope(patterns=list(recipe.ignored), validate=False)
    q = nncf.quantize(
        model, nncf.Dataset(list(items)), model_type=nncf.ModelType.TRANSFORMER,
        subset_size=int(subset_size or len(items)),
        advanced_parameters=nncf.AdvancedQuantizationParameters(
            smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=recipe.smooth_quant)),
        **kw,
    )
    xml_path = Path(xml_path)
    ov.save_model(q, str(xml_path), compress_to_fp16=False)
    return xml_path


def ov_runner(path: str | Path, threads: int | None, precision: str) -> Runner:
    """feeds -> first output of ``path`` compiled for the CPU with the runtime's settings."""
    from clipq.runtime.backends.openvino import OpenVinoSettings, compile_config, compile_file

    compiled = compile_file(path, compile_config(OpenVinoSettings(threads=threads), precision))
    names = set().union(*(p.get_names() for p in compiled.inputs))  # a port may carry several tensor names
    req = compiled.create_infer_request()
    out = compiled.output(0)

    def run(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.asarray(req.infer({n: np.ascontiguousarray(a) for n, a in feeds.items() if n in names})[out])

    return run


@dataclass
class OvResult:
    """What :func:`openvino_variants` produced for one network."""

    files: dict[str, tuple[Path, Path]] = field(default_factory=dict)  # variant -> (xml, bin) staged
    parity: dict[str, dict[str, Any]] = field(default_factory=dict)
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant -> {"precision", ...}
    decisions: dict[str, Any] = field(default_factory=dict)


#: real inputs the parity samples lack and the PyTorch outputs on them: ``(feeds, reference)``
HeldOut = tuple[Mapping[str, np.ndarray], np.ndarray]


def _checked(name: str, variant: str, path: Path, samples: Mapping[int, Mapping[str, np.ndarray]],
             reference: Mapping[int, np.ndarray], target: float, threads: int | None,
             precisions: Sequence[str], held_out: HeldOut | None = None
             ) -> tuple[str | None, dict[str, Any], dict[str, float]]:
    """Parity in each precision in turn; the first that meets ``target`` (on the parity samples and
    on ``held_out`` where given) wins.

    Returns:
        (precision that passed or None, its parity report (else the last one), min cos per precision
        tried: the worse of the parity samples and the held-out inputs).
    """
    tried: dict[str, float] = {}
    report: dict[str, Any] = {}
    for p in precisions:
        run = ov_runner(path, threads, p)
        report = check_parity(name, f"{variant}/{p}", run, samples, reference, REDUCED, raise_on_fail=False)
        tried[p] = report["min_cos"]
        if held_out is not None and report["passed"] and report["min_cos"] >= target:
            feeds, ref = held_out
            try:
                report["held_out"] = {**compare(ref, run(feeds)), "items": int(len(ref))}
            except ParityError as e:
                report["held_out"] = {"min_cos": -1.0, "error": str(e), "items": int(len(ref))}
            tried[p] = min(tried[p], report["held_out"]["min_cos"])
        if report["passed"] and tried[p] >= target:
            return p, report, tried
    return None, report, tried


def openvino_variants(name: str, fp32_onnx: Path, stage: Path, samples: Mapping[int, Mapping[str, np.ndarray]],
                      reference: Mapping[int, np.ndarray],
                      calibration: Callable[[], tuple[list[dict[str, np.ndarray]], str]],
                      *, target: float, threads: int | None = None, int8: bool = True,
                      recipes: Sequence[NncfRecipe] | None = None, subset_size: int | None = None,
                      held_out: HeldOut | None = None) -> OvResult:
    """Write and check the OpenVINO variants of one network into ``stage``.

    Args:
        name: The network.
        fp32_onnx: Its checked fp32 ONNX graph.
        stage: Where the IR files go (the pipeline moves them into ``openvino/`` at commit).
        samples, reference: The parity inputs and PyTorch outputs per batch size.
        calibration: Returns the calibration items and where they came from (called only for int8).
        target: Minimum row cosine against PyTorch (the network's quality target).
        threads: CPU threads for the parity runs.
        int8: Also try NNCF int8 (the pipeline turns it off for graphs without MatMul weights).
        recipes: NNCF recipes in the order tried (default :data:`DEFAULT_NNCF_RECIPES`).
        subset_size: Calibration items NNCF uses (default: all).
        held_out: Real inputs beyond the parity samples and PyTorch's outputs on them, which every
            variant must also meet ``target`` on (the pipeline passes photos the calibration never
            saw when the parity images are synthetic).

    Returns:
        An :class:`OvResult`: the variants that met ``target`` with files, parity and precision; every
        refusal with its reason in ``decisions``.
    """
    from clipq.runtime.backends.openvino import bf16_capable

    res = OvResult()
    precisions = ("bf16", "f32") if bf16_capable() else ("f32",)
    t0 = time.perf_counter()
    xml = to_ir(fp32_onnx, stage / f"{name}.xml")
    p, report, tried = _checked(name, "ov_fp32", xml, samples, reference, target, threads, precisions, held_out)
    dec: dict[str, Any] = {"cos_by_precision": tried, "target_min_cos": target, "seconds": time.perf_counter() - t0}
    if p is None:
        dec["rejected"] = f"min cosine {max(tried.values()):.6f} below {target} in {', '.join(tried)}"
        log.warning("%s: OpenVINO IR %s: not adopted", name, dec["rejected"])
        res.decisions["ov_fp32"] = dec
        for f in (xml, xml.with_suffix(".bin")):
            f.unlink(missing_ok=True)
        return res
    res.files["ov_fp32"] = (xml, xml.with_suffix(".bin"))
    res.parity["ov_fp32"] = {**report, "precision": p, "target_min_cos": target, "meets_target": True}
    res.meta["ov_fp32"] = {"precision": p}
    res.decisions["ov_fp32"] = {**dec, "precision": p}
    if not int8:
        res.decisions["ov_int8"] = "skipped: the graph has no MatMul weights to quantise"
        return res
    try:
        items, source = calibration()
    except MissingDependencyError as e:
        res.decisions["ov_int8"] = f"skipped: {e}"
        return res
    cand: dict[str, Any] = {}
    chosen = None
    # bf16 for the layers NNCF leaves in float only where the fp32 IR passed in bf16
    int8_precisions = precisions[precisions.index(p):]
    for r in recipes or DEFAULT_NNCF_RECIPES:
        t1 = time.perf_counter()
        out = stage / f"{name}.{r.name}.int8.xml"
        try:
            quantize_ir(xml, out, items, r, subset_size)
        except Exception as e:  # noqa: BLE001 - NNCF fails on patterns it does not know: try the next recipe
            cand[r.name] = {"recipe": r.to_dict(), "skipped": f"NNCF failed: {e}"}
            continue
        q, qrep, qtried = _checked(name, f"ov_int8/{r.name}", out, samples, reference, target, threads,
                                   int8_precisions, held_out)
        cand[r.name] = {"recipe": r.to_dict(), "cos_by_precision": qtried, "meets_target": q is not None,
                        "seconds": time.perf_counter() - t1}
        if q is not None:
            chosen = (r, out, q, qrep)
            break
        for f in (out, out.with_suffix(".bin")):
            f.unlink(missing_ok=True)
    dec8: dict[str, Any] = {"candidates": cand, "calibration": {"items": len(items), "source": source,
                                                                "subset_size": int(subset_size or len(items))},
                            "target_min_cos": target}
    if chosen is None:
        best = max((max(c["cos_by_precision"].values()) for c in cand.values() if c.get("cos_by_precision")),
                   default=float("nan"))
        dec8["rejected"] = f"no NNCF recipe reaches cosine {target} against PyTorch (best {best:.6f})"
        log.warning("%s: OpenVINO int8: %s", name, dec8["rejected"])
        res.decisions["ov_int8"] = dec8
        return res
    r, out, q, qrep = chosen
    final = stage / f"{name}.int8.xml"
    out.replace(final)
    out.with_suffix(".bin").replace(final.with_suffix(".bin"))
    res.files["ov_int8"] = (final, final.with_suffix(".bin"))
    res.parity["ov_int8"] = {**qrep, "recipe": r.name, "precision": q, "target_min_cos": target, "meets_target": True}
    res.meta["ov_int8"] = {"precision": q, "recipe": r.to_dict()}
    res.decisions["ov_int8"] = {**dec8, "chosen": r.name, "precision": q}
    return res
