"""Reduced-precision variants: int8 for CPUs, fp16 for GPUs.

int8: onnxruntime's dynamic quantisation with signed 8-bit weights (QInt8: on CPUs with
AVX512-VNNI, QUInt8 measured 40-50 % slower), MatMul only (the patch-embedding Conv and the
embedding Gathers are a sliver of the time and quantising them only costs accuracy), per-tensor
or per-channel; and static QDQ quantisation calibrated on the embedded data. Which one a network
gets is decided by measurement in the pipeline, never assumed.

fp16: weights and activations in half precision with fp32 graph inputs and outputs
(``keep_io_types``), so the manifest's tensor contract does not change between variants.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipq.runtime.errors import MissingDependencyError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Int8Recipe:
    """One int8 quantisation recipe (a candidate the pipeline measures).

    Attributes:
        name: Short name used in reports and the manifest.
        static: Static QDQ (calibrated activations) instead of dynamic quantisation.
        per_channel: One weight scale per output channel instead of per tensor.
        op_types: Op types to quantise.
    """

    name: str
    static: bool = False
    per_channel: bool = False
    op_types: tuple[str, ...] = ("MatMul",)
    exclude: str | None = None  # regex over node names kept in fp32
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "static": self.static, "per_channel": self.per_channel,
                "op_types": list(self.op_types), "exclude": self.exclude, "reduce_range": needs_reduce_range()}


def needs_reduce_range(flags: Mapping[str, bool] | None = None) -> bool:
    """Whether int8 weights must keep to 7 bits on this CPU (onnxruntime's ``reduce_range``).

    An x86 CPU without VNNI runs onnxruntime's u8 x s8 MatMul through ``vpmaddubsw``, whose int16
    sums of two products saturate with full 8-bit weights. Measured on a 2-core Zen 3 EPYC (AVX2, no
    VNNI), on the test preset's random towers: int8 min cosine 0.924-0.988 with 8-bit weights, below
    the 0.99 floor, and 0.997-0.9999 with 7-bit ones. CPUs with VNNI (``vpdpbusd`` accumulates in
    int32) or AMX keep the full 8 bits; so do non-x86 CPUs (no ``avx2`` flag), whose kernels differ.
    """
    if flags is None:
        from clipq.runtime.backends.common import cpu_facts

        flags = cpu_facts()["flags"]
    if not flags.get("avx2"):
        return False
    return not (flags.get("avx512_vnni") or flags.get("avx_vnni") or flags.get("amx_int8"))


#: the second linear layer of each transformer MLP (CLIP fc2, BERT output.dense, DistilBERT lin2):
#: its input is the GELU output, whose outliers per-tensor activation scales handle worst
FFN_OUT = r"/mlp/fc2/|(?<!attention)/output/dense/|/ffn/lin2/"

DYNAMIC = Int8Recipe("dynamic")
DYNAMIC_PER_CHANNEL = Int8Recipe("dynamic_per_channel", per_channel=True)
# all-MiniLM-L6-v2 measured: per-tensor cosine 0.936, per-channel 0.991, per-channel with the MLP
# output layers in fp32 0.994 (on real prompts)
DYNAMIC_PER_CHANNEL_FFN_FP32 = Int8Recipe("dynamic_per_channel_ffn_fp32", per_channel=True, exclude=FFN_OUT)
STATIC_QDQ = Int8Recipe("static_qdq", static=True, per_channel=True)
DEFAULT_RECIPES: tuple[Int8Recipe, ...] = (DYNAMIC, DYNAMIC_PER_CHANNEL, DYNAMIC_PER_CHANNEL_FFN_FP32, STATIC_QDQ)


def excluded_nodes(path: str | os.PathLike[str], pattern: str | None, op_types: Sequence[str]) -> list[str]:
    """Names of the ``op_types`` nodes of a graph whose name matches ``pattern``."""
    if not pattern:
        return []
    import re

    import onnx

    rx = re.compile(pattern)
    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in op_types and rx.search(n.name)]


def _quant() -> Any:
    try:
        from onnxruntime import quantization
    except ImportError as e:  # pragma: no cover - onnxruntime is a base dependency
        raise MissingDependencyError("onnxruntime", "runtime", "quantisation") from e
    return quantization


class _Calibration:
    """An onnxruntime ``CalibrationDataReader`` over a list of feed dicts."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]], input_names: Sequence[str]):
        self._it = iter([{n: np.ascontiguousarray(f[n]) for n in input_names} for f in feeds])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - only used by some calibrators
        raise NotImplementedError


@contextlib.contextmanager
def quiet_root_logger(level: int = logging.ERROR) -> Iterator[None]:
    """onnxruntime's quantiser and optimizer log a line per tensor or fusion through the root
    logger (or loggers that inherit its level); raise the threshold while they run."""
    root = logging.getLogger()
    before = root.level
    root.setLevel(max(before, level))
    try:
        yield
    finally:
        root.setLevel(before)


def quantize_int8(src: str | os.PathLike[str], dst: str | os.PathLike[str], recipe: Int8Recipe, *,
                  calibration: Iterable[Mapping[str, np.ndarray]] | None = None,
                  input_names: Sequence[str] = ()) -> Path:
    """Write an int8 version of ``src`` to ``dst`` following ``recipe``.

    Args:
        src: fp32 ONNX graph.
        dst: Output path.
        recipe: Which quantisation.
        calibration: Feed dicts for static quantisation (a few dozen representative batches).
        input_names: Graph input names (static quantisation).

    Returns:
        ``dst``.

    Raises:
        ValueError: a static recipe without calibration data.
    """
    q = _quant()
    src, dst = Path(src).resolve(), Path(dst).resolve()
    dst.unlink(missing_ok=True)
    # a graph fused by the transformer optimizer carries com.microsoft ops without type info; the
    # quantiser then needs to be told that untyped tensors are float (``DefaultTensorType`` below: the
    # prototype found that quantising the optimizer-fused CLIP ViT-B/32 graphs needs it)
    # onnx.save_model(save_as_external_data=True) inside the quantiser writes "<uuid>.data" files
    # into the working directory; run it from a scratch directory so none are left behind
    with quiet_root_logger(), tempfile.TemporaryDirectory(prefix="clipq-quant-") as scratch, _cwd(scratch):
        return _quantize(q, src, dst, recipe, calibration, input_names)


@contextlib.contextmanager
def _cwd(path: str) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _quantize(q: Any, src: Path, dst: Path, recipe: Int8Recipe,
              calibration: Iterable[Mapping[str, np.ndarray]] | None, input_names: Sequence[str]) -> Path:
    extra = {"DefaultTensorType": 1, **dict(recipe.extra)}
    exclude = excluded_nodes(src, recipe.exclude, recipe.op_types)
    if not recipe.static:
        q.quantize_dynamic(
            str(src), str(dst), op_types_to_quantize=list(recipe.op_types), per_channel=recipe.per_channel,
            reduce_range=needs_reduce_range(), weight_type=q.QuantType.QInt8, nodes_to_exclude=exclude,
            extra_options=extra,
        )
        return dst
    if calibration is None:
        raise ValueError(f"recipe {recipe.name!r} needs calibration data")
    # shape inference first, as onnxruntime recommends before static quantisation
    pre = dst.with_name(dst.stem + ".pre.onnx")
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        base = pre
    except Exception as e:  # noqa: BLE001 - pre-processing is an optimisation, not a requirement
        log.debug("quant_pre_process failed (%s); quantising the graph as is", e)
        base = src
    try:
        q.quantize_static(
            str(base), str(dst), _Calibration(list(calibration), input_names),
            quant_format=q.QuantFormat.QDQ, op_types_to_quantize=list(recipe.op_types),
            per_channel=recipe.per_channel, reduce_range=needs_reduce_range(), activation_type=q.QuantType.QInt8,
            weight_type=q.QuantType.QInt8, nodes_to_exclude=exclude,
            calibrate_method=q.CalibrationMethod.MinMax,
            extra_options={**extra, "ActivationSymmetric": True, "CalibMovingAverage": True},
        )
    finally:
        pre.unlink(missing_ok=True)
    return dst


def convert_fp16(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Write an fp16 version of ``src`` (fp32 inputs/outputs kept) to ``dst``.

    Ops that lose range or precision in half (the normalisation's reductions and the softmax of
    the answer head) are left in fp32 by onnxruntime's converter's default block list plus ours.
    """
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | {"ReduceL2", "LpNormalization"})
    model16 = convert_float_to_float16(model, keep_io_types=True, op_block_list=block, disable_shape_infer=False)
    dst = Path(dst)
    onnx.save_model(model16, str(dst))
    return dst
