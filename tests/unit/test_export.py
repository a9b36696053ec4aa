"""Export: ONNX graphs that match their PyTorch originals, variants, manifest records, typed failures.

Runs on the ``test`` preset (every architecture at toy size, random weights) so the whole export,
with int8, fp16 and optimizer candidates, takes seconds. ``prompt_text`` (the real all-MiniLM-L6-v2)
goes through the same code path as ``clip_text`` and is left out here for time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _require import require_module

torch = require_module("torch")
onnx = require_module("onnx")
require_module("transformers")

from clipq.export import ExportOptions, export_artifacts  # noqa: E402
from clipq.export.parity import FP32, REDUCED, check_parity, compare  # noqa: E402
from clipq.export.quantize import DYNAMIC, DYNAMIC_PER_CHANNEL  # noqa: E402
from clipq.export.tensorrt import build_engines, tensorrt_status  # noqa: E402
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


def test_default_variants_give_an_item_the_same_output_whatever_its_batch(exported):
    """onnxruntime's dynamic int8 scales activations per batch: kept as an opt-in variant, never the
    default, so that an image indexed in one batch and queried in another gets one embedding."""
    root, _, _ = exported
    m = Manifest.load(root)
    for name in NETWORKS:
        spec = m.model(name)
        assert spec.parity[spec.default_variant]["batch_invariant"], name
        assert spec.parity["fp32"]["batch_invariance"]["max_rel"] <= 1e-5, name
        if "int8" in spec.variants:  # dynamic recipes only in this fixture
            inv = spec.parity["int8"]["batch_invariance"]
            assert inv["batch"] == spec.max_batch_size and inv["max_rel"] > 1e-4, (name, inv)
            assert not spec.parity["int8"]["batch_invariant"] and spec.default_variant != "int8", name
    rng = np.random.default_rng(3)
    imgs = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(6)]
    auto = ClipEncoder(OrtBackend(m, threads=1))  # the manifest's default variants
    int8 = ClipEncoder(OrtBackend(m, variant="int8", threads=1))
    np.testing.assert_allclose(auto.encode_images(imgs[:1]), auto.encode_images(imgs)[:1], atol=1e-5, rtol=0)
    moved = np.abs(int8.encode_images(imgs[:1]) - int8.encode_images(imgs)[:1]).max()
    assert moved > 1e-4  # what the gate keeps out of the default
    assert compare(auto.encode_images(imgs), int8.encode_images(imgs))["min_cos"] >= 0.99


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
    assert ok["batch_invariant"] and ok["batch_invariance"] == {"batch": 8, "max_abs": 0.0, "max_rel": 0.0,
                                                                 "min_cos": pytest.approx(1.0)}
    # rounding to a grid set by the whole batch's range (as dynamic int8 does): passes parity, moves rows
    per_batch = lambda f: np.round(f["x"] * 127 / np.abs(f["x"]).max()) * np.abs(f["x"]).max() / 127  # noqa: E731
    moving = check_parity("net", "int8", per_batch, samples, ref, REDUCED)
    assert moving["passed"] and not moving["batch_invariant"] and moving["batch_invariance"]["max_rel"] > 1e-4
    noisy = lambda f: f["x"] + 0.3 * rng.standard_normal(f["x"].shape)  # noqa: E731
    with pytest.raises(ParityError, match="min cosine"):
        check_parity("net", "int8", noisy, samples, ref, REDUCED)
    assert not check_parity("net", "int8", noisy, samples, ref, REDUCED, raise_on_fail=False)["passed"]
    with pytest.raises(ParityError, match="NaN"):
        check_parity("net", "fp32", lambda f: f["x"] * np.nan, samples, ref, FP32)


def _path_with(tmp_path, monkeypatch, smi: str | None) -> None:
    """PATH holding only a fake ``nvidia-smi`` (or none), so detection runs for real on each case."""
    from clipq.runtime.backends.ort import gpu_fingerprint

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if smi is not None:
        exe = bin_dir / "nvidia-smi"
        exe.write_text(f"#!/bin/sh\necho '{smi}'\n")
        exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    gpu_fingerprint.cache_clear()


def test_tensorrt_without_gpu_does_nothing_but_say_so(exported, tmp_path, monkeypatch):
    from clipq.runtime.backends.ort import gpu_fingerprint

    root, _, _ = exported
    m = Manifest.load(root)
    before = dict(m.files)
    _path_with(tmp_path, monkeypatch, None)
    try:
        out = build_engines(m)  # detects for itself: no nvidia-smi on PATH
    finally:
        gpu_fingerprint.cache_clear()
    assert out == {"status": "no NVIDIA GPU visible (nvidia-smi not found or failed)", "available": False, "engines": {}}
    assert m.files == before and not (Path(root) / "trt_cache").exists()


def test_tensorrt_with_gpu_but_no_builder_says_what_is_missing(exported, tmp_path, monkeypatch):
    import importlib.util

    from clipq.runtime.backends.ort import gpu_fingerprint

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here: the no-builder case cannot happen")
    _path_with(tmp_path, monkeypatch, "NVIDIA H200, 9.0, 570.1")
    try:
        status = tensorrt_status()
    finally:
        gpu_fingerprint.cache_clear()
    assert not status.available and status.fingerprint["gpu"] == "NVIDIA H200"
    assert "GPU NVIDIA H200 found, but neither the tensorrt package nor onnxruntime-gpu" in status.reason


def test_export_with_data_uses_real_inputs_and_static_int8(trained_artifacts, small_world, tmp_path):
    """Trained artifacts + their data (through the app's ExportInputs): real parity inputs and static
    QDQ calibrated on the training split; the app's task metrics on those graphs through the runtime."""
    import shutil

    from clipq.app.taskmetrics import DataTaskMetrics, export_inputs
    from clipq.export.quantize import STATIC_QDQ

    root = tmp_path / "artifacts"
    shutil.copytree(trained_artifacts[0], root)
    nets = ["clip_image", "clip_text", "vqa"]
    opts = ExportOptions(int8=True, networks=nets, inputs=export_inputs(small_world), parity_batches=(1, 8),
                         timing_rounds=2, int8_recipes=(DYNAMIC, STATIC_QDQ))
    report = export_artifacts(root, opts)
    assert report.task_metrics == {}  # no gate asked for
    m = Manifest.load(root)
    for n in nets:
        cands = m.model(n).meta["export"]["decisions"]["int8"]["candidates"]
        assert "min_cos" in cands["static_qdq"]  # calibrated and measured, whether chosen or not
        # static scales: an item's output does not depend on its batch; dynamic ones do (see the gate)
        assert cands["static_qdq"]["batch_invariance"]["max_rel"] <= 1e-4, (n, cands["static_qdq"])
        assert cands["dynamic"]["batch_invariance"]["max_rel"] > 1e-4 and not cands["dynamic"]["meets_target"]
    metrics = DataTaskMetrics(small_world, limit=200)
    fp32 = metrics(m, {n: "fp32" for n in nets})
    int8 = metrics(m, {n: "int8" for n in nets if "int8" in m.model(n).variants})
    assert set(fp32) == {"recall@5", "vqa_accuracy"} and set(int8) == set(fp32)
    # recomputed here: the same graphs through connect() and the task classes, the metrics with numpy
    for variants, got in (({n: "fp32" for n in nets}, fp32), ({n: "int8" for n in nets if "int8" in m.model(n).variants},
                                                              int8)):
        want, n_items = _recomputed_task_metrics(root, small_world, variants, limit=200)
        for k in ("recall@5", "vqa_accuracy"):  # one item's worth of slack: batches differ, a near tie may flip
            assert got[k] == pytest.approx(want[k], abs=100.0 / n_items[k] + 1e-9), (variants, k, got, want)


def _recomputed_task_metrics(root, data, variants, limit):
    """Recall@5 (first caption of each test image -> images) and VQA accuracy, counted directly."""
    from clipq.readers import World
    from clipq.runtime import connect
    from clipq.runtime.tasks import ClipEncoder, VqaModel

    s = World(data, check_images=False).split("test")
    first: dict[str, str] = {}
    for c in s.captions:
        first.setdefault(c.image, c.text)
    ids = [i for i in s.image_ids if i in first][:limit]
    qs = s.questions[:limit]
    with connect(root, variant=dict(variants)) as b:
        enc = ClipEncoder(b)
        sim = enc.encode_texts([first[i] for i in ids]) @ enc.encode_images([s.path_of(i) for i in ids]).T
        top5 = np.argsort(-sim, axis=1, kind="stable")[:, :5]
        recall = 100.0 * sum(i in top5[i] for i in range(len(ids))) / len(ids)
        answers = VqaModel(b, encoder=enc).ask([s.path_of(q.image_id) for q in qs], [q.question for q in qs], top_k=1)
        acc = 100.0 * sum(a.answer == q.answer for a, q in zip(answers, qs)) / len(qs)
    return {"recall@5": recall, "vqa_accuracy": acc}, {"recall@5": len(ids), "vqa_accuracy": len(qs)}


class _ScriptedMetrics:
    """Task metrics that report a fixed drop for int8 graphs (the gate's contract, not its data)."""

    def __init__(self, int8_drop: float):
        self.int8_drop, self.calls = int8_drop, []

    def __call__(self, m, variants):
        self.calls.append(dict(variants))
        drop = self.int8_drop if "int8" in variants.values() else 0.0
        return {"recall@5": 50.0 - drop, "vqa_accuracy": 40.0 - drop}


@pytest.mark.parametrize("drop", [0.5, 2.0])
def test_task_metric_gate_keeps_or_removes_int8(exported, tmp_path, drop):
    """int8 graphs that lose <= 1 point are kept with their deltas; losing more removes them from the
    manifest and the disk (the artifact stays consistent) and the export goes on, or, with
    ``require_int8``, raises ParityError."""
    import shutil

    root = tmp_path / "artifacts"
    shutil.copytree(exported[0], root)
    gate = _ScriptedMetrics(drop)
    opts = ExportOptions(int8=True, networks=["clip_image"], task_metrics=gate, timing_rounds=2,
                         int8_recipes=(DYNAMIC,))
    if drop <= 1.0:
        report = export_artifacts(root, opts, modules={"clip_image": exported[1]["clip_image"]})
        assert report.task_metrics["delta"]["int8"] == {"recall@5": -drop, "vqa_accuracy": -drop}
        m = Manifest.load(root)
        assert "int8" in m.model("clip_image").variants
        assert m.model("clip_image").parity["int8"]["task_metrics"] == {"recall@5": -drop, "vqa_accuracy": -drop}
    else:  # the int8 graphs are removed and the export goes on (fp32 serves); require_int8 makes it an error
        report = export_artifacts(root, opts, modules={"clip_image": exported[1]["clip_image"]})
        assert report.task_metrics["rejected"]["int8"]["delta"] == {"recall@5": -drop, "vqa_accuracy": -drop}
        assert "int8 not deployed" in report.markdown()
        m = Manifest.load(root)
        m.verify_all()
        for n in gate.calls[1]:  # every int8 graph the gate judged is gone
            assert "int8" not in m.model(n).variants
            assert not (root / "onnx" / f"{n}.int8.onnx").exists()
    assert gate.calls[0] == {n: "fp32" for n in m.models}
    assert gate.calls[1]["clip_image"] == "int8" and set(gate.calls[1].values()) == {"int8"}
    if drop > 1.0:
        strict = tmp_path / "strict"
        shutil.copytree(exported[0], strict)
        with pytest.raises(ParityError, match="embedded tasks"):
            export_artifacts(strict, ExportOptions(int8=True, require_int8=True, networks=["clip_image"],
                                                   task_metrics=_ScriptedMetrics(drop), timing_rounds=2,
                                                   int8_recipes=(DYNAMIC,)),
                             modules={"clip_image": exported[1]["clip_image"]})
        m = Manifest.load(strict)
        m.verify_all()
        assert "int8" not in m.model("clip_image").variants


def test_reading_towers_match_their_checkpoint_at_the_served_batches(tiny_artifacts, small_world, record_property):
    """The CLIP fine-tuned for reading (``checkpoints/clip_reading``) is exported as ``reading_image`` and
    ``reading_text`` with recorded parity; the graphs reproduce the checkpoint's PyTorch towers on word
    images and question + candidate texts at batch 1, 8 and the largest batch each serves."""
    from clipq.models.export_wrappers import ClipImageTower, ClipTextTower
    from clipq.models.io import load_clip
    from clipq.readers import World
    from clipq.runtime.preprocess import ImagePreprocessor
    from clipq.runtime.text import TextTokenizer

    m = Manifest.load(tiny_artifacts)
    assert m.extra["export"]["networks"][-2:] == ["reading_image", "reading_text"]
    for name, tower in (("reading_image", "clip_image"), ("reading_text", "clip_text")):
        spec = m.model(name)
        assert spec.file == f"onnx/{name}.onnx" and spec.inputs == m.model(tower).inputs
        p = spec.parity["fp32"]
        assert p["passed"] and p["max_abs"] <= 1e-4 and p["min_cos"] >= 0.9999
        if "int8" in spec.variants:
            assert spec.parity["int8"]["min_cos"] >= 0.99
        # the fine-tuned copy, not CLIP's own graph
        assert m.files[spec.file]["sha256"] != m.files[m.model(tower).file]["sha256"]
    clip = load_clip(m, m.extra["reading"]["checkpoint"]).eval()
    base = load_clip(m).eval()  # what the reading model was fine-tuned from: the check must tell them apart
    words = World(small_world).split("test").words
    texts = [f"{r.question} {c}" for r in words for c in m.extra["reading"]["candidates"]]
    pre, tok = ImagePreprocessor.from_manifest(m), TextTokenizer.from_manifest(m, "clip")
    cases = {
        "reading_image": (ClipImageTower, lambda b: {"pixel_values": pre([words[i % len(words)].image_path
                                                                          for i in range(b)])}),
        "reading_text": (ClipTextTower, lambda b: tok([texts[i % len(texts)] for i in range(b)]).as_inputs()),
    }
    backend = OrtBackend(m, variant="fp32", threads=1)
    figures = {}
    for name, (tower, feeds_of) in cases.items():
        spec = m.model(name)
        for b in sorted({1, 8, spec.max_batch_size}):
            feeds = feeds_of(b)
            with torch.inference_mode():
                want, other = (tower(c).eval()(*(torch.from_numpy(feeds[t.name]) for t in spec.inputs)).numpy()
                               for c in (clip, base))
            got = backend.infer(name, feeds)[spec.outputs[0].name]
            c = compare(want, got)
            figures[f"{name}@{b}"] = c
            assert c["max_abs"] <= 1e-4 and c["min_cos"] >= 0.9999, (name, b, c)
            assert compare(other, got)["max_abs"] > 10 * c["max_abs"], (name, b)
    backend.close()
    record_property("parity", figures)
    print(json.dumps(figures))


def test_int8_weights_keep_to_7_bits_only_on_x86_without_vnni():
    from clipq.export.quantize import DYNAMIC, needs_reduce_range

    assert needs_reduce_range({"avx2": True}) is True  # AVX2 only: vpmaddubsw saturates with 8-bit weights
    assert needs_reduce_range({"avx2": True, "avx512_vnni": True}) is False
    assert needs_reduce_range({"avx2": True, "avx_vnni": True}) is False
    assert needs_reduce_range({"avx2": True, "amx_int8": True}) is False
    assert needs_reduce_range({}) is False  # not x86 (or unknown): full 8 bits
    assert DYNAMIC.to_dict()["reduce_range"] == needs_reduce_range()  # recorded with every recipe
