"""Export: ONNX graphs that match their PyTorch originals, variants, manifest records, typed failures.

Runs on the ``test`` preset (every architecture at toy size, random weights) so the whole export,
with int8, fp16 and optimizer candidates, takes seconds. ``prompt_text`` (the real all-MiniLM-L6-v2)
goes through the same code path as ``clip_text`` and is left out here for time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("transformers")

from clipq.export import ExportOptions, export_artifacts  # noqa: E402
from clipq.export.parity import FP32, REDUCED, check_parity, compare  # noqa: E402
from clipq.export.quantize import DYNAMIC, DYNAMIC_PER_CHANNEL  # noqa: E402
from clipq.export.tensorrt import TensorRTStatus, build_engines  # noqa: E402
from clipq.runtime.backends.ort import OrtBackend  # noqa: E402
from clipq.runtime.errors import ParityError  # noqa: E402
from clipq.runtime.manifest import Manifest  # noqa: E402
from clipq.runtime.tasks import ClipEncoder, VqaModel  # noqa: E402

NETWORKS = ["clip_image", "clip_text", "vqa", "img2prompt_a", "ensemble_head"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from clipq.models.io import build_random_artifacts, load_for_export

    root = tmp_path_factory.mktemp("export") / "artifacts"
    build_random_artifacts(root, "test")
    modules = load_for_export(root)
    opts = ExportOptions(int8=True, fp16=True, optimize=True, networks=NETWORKS, timing_rounds=3,
                         int8_recipes=(DYNAMIC, DYNAMIC_PER_CHANNEL))
    report = export_artifacts(root, opts, modules=modules)
    return root, modules, report


def test_every_graph_is_recorded_with_parity(exported):
    root, _, report = exported
    m = Manifest.load(root)
    m.verify_all()  # every file listed, hashes match
    assert set(NETWORKS) <= set(m.models)
    for name in NETWORKS:
        spec = m.model(name)
        assert spec.file == f"onnx/{name}.onnx"
        p = spec.parity["fp32"]
        assert p["passed"] and p["max_abs"] <= 1e-4 and p["min_cos"] >= 0.9999
        assert set(p["batches"]) == {"1", "8", str(spec.max_batch_size)}
        assert spec.parity["fp16"]["min_cos"] >= 0.99 and "fp16" in spec.variants
        if name != "ensemble_head":  # nothing to quantise in the head
            assert spec.parity["int8"]["min_cos"] >= 0.99 and spec.variants["int8"] == f"onnx/{name}.int8.onnx"
            assert spec.parity["int8"]["recipe"] in ("dynamic", "dynamic_per_channel")
        assert spec.default_variant in ("fp32", "int8", "opt")
        for rel in [spec.file, *spec.variants.values()]:
            assert rel in m.files and (root / rel).is_file()
        assert "decisions" in spec.meta["export"]
    assert "| clip_image | fp32 |" in report.markdown()


def test_graphs_declare_the_spec_tensors_with_dynamic_axes(exported):
    root, _, _ = exported
    m = Manifest.load(root)
    for name in NETWORKS:
        spec = m.model(name)
        g = onnx.load(str(root / spec.file))
        assert max(o.version for o in g.opset_import if o.domain in ("", "ai.onnx")) >= 17
        ins = {i.name: i for i in g.graph.input}
        assert [i.name for i in g.graph.input] == [t.name for t in spec.inputs]
        assert [o.name for o in g.graph.output] == [t.name for t in spec.outputs]
        for t in spec.inputs:
            dims = ins[t.name].type.tensor_type.shape.dim
            assert dims[0].dim_param == "batch"
            if t.dtype == "int64":  # text: the sequence length is dynamic too
                assert dims[1].dim_param == "sequence"
            assert ins[t.name].type.tensor_type.elem_type == {"float32": 1, "int64": 7}[t.dtype]


def test_runtime_on_exported_graphs_matches_pytorch_end_to_end(exported):
    """Runtime preprocessing + tokenizer + ONNX == CLIPImageProcessor + tokenizer + PyTorch."""
    from transformers import CLIPImageProcessor

    root, modules, _ = exported
    m = Manifest.load(root)
    backend = OrtBackend(m, variant="fp32", threads=1)
    enc = ClipEncoder(backend)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((48, 64), (90, 40), (32, 32))]
    proc = CLIPImageProcessor.from_pretrained(root / "checkpoints" / "clip")
    pixels = torch.from_numpy(proc(images=images, return_tensors="np")["pixel_values"])
    with torch.inference_mode():
        want = modules["clip_image"](pixels).numpy()
    got = enc.encode_images(images)
    assert compare(want, got)["min_cos"] >= 0.9999 and np.abs(want - got).max() <= 1e-4

    from clipq.models.io import load_tokenizer, tokenize

    texts = ["a red circle on the left", "two blue squares", "what " * 80]
    ids, mask = tokenize(load_tokenizer(m, "clip"), texts)  # the training side's tokenisation
    with torch.inference_mode():
        want = modules["clip_text"](ids, mask).numpy()
    got, truncated = enc.encode_texts(texts, return_truncated=True)
    assert np.abs(want - got).max() <= 1e-4 and truncated == [False, False, True]

    emb = enc.encode_images(images)
    qs = ["what color is the circle?", "how many squares?", "where is the star?"]
    qi, qm = tokenize(load_tokenizer(m, "lm"), qs)
    with torch.inference_mode():
        want = modules["vqa"](torch.from_numpy(emb), qi, qm).numpy()
    probs, _ = VqaModel(backend, encoder=enc).probs(emb, qs)
    assert np.abs(want - probs).max() <= 1e-4
    backend.close()


def test_int8_default_runs_in_the_runtime(exported):
    root, _, _ = exported
    m = Manifest.load(root)
    fp32 = ClipEncoder(OrtBackend(m, variant="fp32", threads=1))
    auto = ClipEncoder(OrtBackend(m, threads=1))  # the manifest's default variants
    imgs = [np.full((40, 40, 3), v, np.uint8) for v in (10, 128, 250)]
    assert compare(fp32.encode_images(imgs), auto.encode_images(imgs))["min_cos"] >= 0.99


class _Drifting(torch.nn.Module):
    """Its output changes from call to call: tracing freezes the first call's behaviour."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, a_embeds, b_embeds, alpha):
        self.calls += 1
        return torch.nn.functional.normalize(a_embeds + self.calls * b_embeds * alpha, dim=-1)


def test_parity_failure_is_a_typed_error(exported, tmp_path):
    root, modules, _ = exported
    with pytest.raises(ParityError, match="ensemble_head"):
        export_artifacts(root, ExportOptions(networks=["ensemble_head"]), modules={"ensemble_head": _Drifting()})
    # a failed export changes nothing: the earlier graphs and manifest are intact and consistent
    m = Manifest.load(root)
    m.verify_all()
    assert m.model("ensemble_head").parity["fp32"]["passed"] and "fp16" in m.model("ensemble_head").variants
    assert not (Path(root) / "onnx" / ".staging").exists()


def test_check_parity_reports_and_raises():
    rng = np.random.default_rng(0)
    ref = {1: rng.standard_normal((1, 16)), 8: rng.standard_normal((8, 16))}
    samples = {1: {"x": ref[1]}, 8: {"x": ref[8]}}
    ok = check_parity("net", "fp32", lambda f: f["x"] + 1e-6, samples, ref, FP32)
    assert ok["passed"] and ok["max_abs"] < 2e-6 and set(ok["batches"]) == {"1", "8"}
    noisy = lambda f: f["x"] + 0.3 * rng.standard_normal(f["x"].shape)  # noqa: E731
    with pytest.raises(ParityError, match="min cosine"):
        check_parity("net", "int8", noisy, samples, ref, REDUCED)
    assert not check_parity("net", "int8", noisy, samples, ref, REDUCED, raise_on_fail=False)["passed"]
    with pytest.raises(ParityError, match="NaN"):
        check_parity("net", "fp32", lambda f: f["x"] * np.nan, samples, ref, FP32)


def test_tensorrt_without_gpu_does_nothing_but_say_so(exported):
    root, _, _ = exported
    m = Manifest.load(root)
    before = dict(m.files)
    out = build_engines(m, status=TensorRTStatus(False, "", "no NVIDIA GPU visible (nvidia-smi not found or failed)"))
    assert out == {"status": "no NVIDIA GPU visible (nvidia-smi not found or failed)", "available": False, "engines": {}}
    assert m.files == before and not (Path(root) / "trt_cache").exists()


def test_export_with_data_checks_task_metrics_and_static_int8(trained_artifacts, small_world, tmp_path):
    """Trained artifacts + their data: real parity inputs, static QDQ calibrated on the training split,
    and the embedded-task metrics of the int8 graphs against fp32 through the runtime."""
    import shutil

    from clipq.export.quantize import STATIC_QDQ

    root = tmp_path / "artifacts"
    shutil.copytree(trained_artifacts[0], root)
    nets = ["clip_image", "clip_text", "vqa"]
    opts = ExportOptions(int8=True, networks=nets, data=small_world, parity_batches=(1, 8), timing_rounds=2,
                         int8_recipes=(DYNAMIC, STATIC_QDQ), task_limit=200)
    try:
        report = export_artifacts(root, opts)
    except ParityError as e:
        # a barely trained model on 50 test images: one flipped answer can cost more than a point.
        # Then the int8 graphs must be gone and the artifact consistent.
        assert "embedded tasks" in str(e)
        m = Manifest.load(root)
        m.verify_all()
        assert all("int8" not in m.model(n).variants for n in nets)
        return
    tm = report.task_metrics
    assert set(tm["fp32"]) == {"recall@5", "vqa_accuracy"} and set(tm["int8"]) == set(tm["fp32"])
    assert all(abs(d) <= 1.0 for d in tm["delta"]["int8"].values())
    m = Manifest.load(root)
    for n in nets:
        cands = m.model(n).meta["export"]["decisions"]["int8"]["candidates"]
        assert "min_cos" in cands["static_qdq"]  # calibrated and measured, whether chosen or not
        assert m.model(n).parity["int8"]["task_metrics"] == tm["delta"]["int8"]
