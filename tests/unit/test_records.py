"""The typed manifest records: what they read and write is the manifest's own JSON, and one reader decides."""

from __future__ import annotations

from clipq.runtime.manifest import ModelSpec, TensorSpec
from clipq.runtime.records import CPU_DEFAULT_KEY, CpuDefault

STORED = {"engine": "openvino", "variant": "ov_int8", "precision": "f32", "ms": {"openvino/ov_int8": {"1": 2.5}},
          "method": "each engine in its own process", "measured_on": {"cpu": "AMD EPYC", "threads": 2,
                                                                      "flags": {"avx512f": True, "amx_int8": False}}}


def _spec(variants: dict[str, str]) -> ModelSpec:
    return ModelSpec(name="clip_image", file="onnx/clip_image.onnx", inputs=[TensorSpec("pixel_values", "float32", (-1, 3, 8, 8))],
                     outputs=[TensorSpec("image_embeds", "float32", (-1, 4))], variants=variants)


def test_cpu_default_round_trips_the_stored_json_unchanged():
    rec = CpuDefault.from_dict(STORED)
    assert (rec.engine, rec.variant, rec.precision, rec.measured_on["cpu"]) == ("openvino", "ov_int8", "f32", "AMD EPYC")
    assert rec.to_dict() == STORED
    spec = _spec({"ov_int8": "openvino/clip_image.int8.xml"})
    rec.store(spec)
    assert spec.meta[CPU_DEFAULT_KEY] == STORED and CpuDefault.of(spec) == rec
    for incomplete in (None, {}, {"engine": "openvino"}, {"variant": "int8"}, "x"):
        assert CpuDefault.from_dict(incomplete) is None


def test_of_is_the_one_reader_deciding_when_a_record_applies():
    spec = _spec({"int8": "onnx/clip_image.int8.onnx"})
    spec.meta[CPU_DEFAULT_KEY] = STORED
    assert CpuDefault.of(spec) is None  # the recorded graph is not in these artifacts
    spec.meta[CPU_DEFAULT_KEY] = {**STORED, "engine": "onnxruntime", "variant": "int8"}
    assert CpuDefault.of(spec).variant == "int8"
    assert CpuDefault.of(spec, engine="openvino") is None  # the OpenVINO backend only takes its own engine's
    spec.meta[CPU_DEFAULT_KEY] = {**STORED, "engine": "onnxruntime", "variant": "fp32"}
    assert CpuDefault.of(spec).variant == "fp32"  # the fp32 graph is always there


def test_measured_like_compares_the_isa_flags_both_machines_report():
    rec = CpuDefault.from_dict(STORED)
    assert rec.measured_like({"avx512f": True, "amx_int8": False, "avx2": True})
    assert not rec.measured_like({"avx512f": True, "amx_int8": True})  # AMX here, not there
    assert not rec.measured_like({"avx2": True})  # no flag in common: not known to be alike
