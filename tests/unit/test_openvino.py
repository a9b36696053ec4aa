"""OpenVINO: the backend against onnxruntime, the IR / NNCF int8 export and its gates, the CPU default.

On the shared test-preset artifacts (tests/conftest.py): the read-only ``tiny_artifacts`` for the
backend's parity on the ONNX graphs, and one private copy (made like ``tiny_artifacts_copy``, once
for the module: the export is the slow part) exported with ``openvino=True`` for the rest.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from _require import require_module

require_module("openvino")
require_module("nncf")
require_module("torch")

from clipq.export.parity import compare  # noqa: E402
from clipq.runtime.backends.common import cpu_facts  # noqa: E402
from clipq.runtime.backends.openvino import OpenVinoBackend  # noqa: E402
from clipq.runtime.backends.ort import OrtBackend  # noqa: E402
from clipq.runtime.backends.routed import RoutedBackend  # noqa: E402
from clipq.runtime.connect import connect  # noqa: E402
from clipq.runtime.engines import ENGINES, engine, open_for_variants  # noqa: E402
from clipq.runtime.errors import BackendUnavailable, DTypeError, InvalidInputError, ShapeError  # noqa: E402
from clipq.runtime.manifest import Manifest  # noqa: E402
from clipq.runtime.tasks import ClipEncoder  # noqa: E402

NETS = ["clip_image", "clip_text", "vqa"]


def _feeds(m: Manifest, name: str, batch: int) -> dict[str, np.ndarray]:
    from clipq.export.calibration import CalibrationSample
    from clipq.export.samples import SampleFactory

    s = CalibrationSample.builtin(per_photo=1)
    return SampleFactory(m, seed=5, images=s.images, texts=s.texts).inputs(m.model(name), batch, offset=batch)


def _route(backend, net: str) -> tuple[str, str]:
    """(engine, variant) that a backend from connect() runs ``net`` on."""
    b = backend.backend_for(net) if isinstance(backend, RoutedBackend) else backend
    return ("openvino" if isinstance(b, OpenVinoBackend) else "onnxruntime"), b.variant_for(net)


def _recall_at_5(data):
    """A task metric as the app measures one, opening each variant on its engine (the registry's routing)."""
    from clipq.readers import World
    from clipq.runtime.metrics import recall_at_k

    split = World(data, check_images=False).split("test")
    first: dict[str, str] = {}
    for c in split.captions:
        first.setdefault(c.image, c.text)
    ids = [i for i in split.image_ids if i in first][:64]

    def metric(manifest, variants):
        backend = open_for_variants(manifest, dict(variants), threads=1)
        try:
            enc = ClipEncoder(backend)
            img = enc.encode_images([split.path_of(i) for i in ids])
            txt = enc.encode_texts([first[i] for i in ids])
        finally:
            backend.close()
        return {"recall@5": recall_at_k(txt @ img.T, np.arange(len(ids)), ks=(5,))[5]}

    return metric


@pytest.fixture(scope="module")
def ov_artifacts(tiny_artifacts, tmp_path_factory, small_world):
    """A private copy of the shared artifacts, exported again with the OpenVINO variants and the task gate."""
    from clipq.export import ExportOptions, export_artifacts
    from clipq.export.quantize import DYNAMIC

    root = tmp_path_factory.mktemp("ov") / "artifacts"
    shutil.copytree(tiny_artifacts, root)
    report = export_artifacts(root, ExportOptions(
        int8=True, int8_recipes=(DYNAMIC,), networks=NETS, timing_rounds=2, openvino=True, openvino_subset_size=32,
        task_metrics=_recall_at_5(small_world), selection_batches=(1, 8), selection_rounds=1, threads=1,
    ))
    return root, report


@pytest.mark.parametrize("name", NETS)
def test_backend_matches_onnxruntime_fp32(tiny_artifacts, name):
    m = Manifest.load(tiny_artifacts)
    ort = OrtBackend(m, variant="fp32", threads=1)
    ov = OpenVinoBackend(m, variant="fp32", precision="f32", threads=1)  # OpenVINO reading the ONNX graph
    out = m.model(name).outputs[0].name
    for b in (1, 8, m.model(name).max_batch_size):
        feeds = _feeds(m, name, b)
        got, ref = ov.infer(name, feeds)[out], ort.infer(name, feeds)[out]
        assert got.dtype == np.float32 and got.shape == ref.shape == (b, m.model(name).outputs[0].shape[-1])
        c = compare(ref, got)
        assert c["max_abs"] <= 1e-4 and c["min_cos"] >= 0.9999, (name, b, c)
    assert ov.engine_info(name) == {"engine": "openvino", "variant": "fp32", "precision": "f32"}


def test_backend_contract_and_connect_by_name(tiny_artifacts):
    backend = connect(tiny_artifacts, engine="openvino", threads=1)
    assert isinstance(backend, OpenVinoBackend)
    spec = backend.spec("clip_image")
    good = _feeds(backend.manifest, "clip_image", 2)
    with pytest.raises(DTypeError):
        backend.infer("clip_image", {"pixel_values": good["pixel_values"].astype(np.float64)})
    with pytest.raises(ShapeError):
        backend.infer("clip_image", {"pixel_values": good["pixel_values"][:, :, :5]})
    with pytest.raises(InvalidInputError):
        backend.infer("clip_image", {"pixel": good["pixel_values"]})
    emb = backend.infer("clip_image", good)[spec.outputs[0].name]
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-3)
    backend.health()
    backend.close()
    with pytest.raises(BackendUnavailable):
        backend.infer("clip_text", _feeds(backend.manifest, "clip_text", 1))
    assert set(engine("openvino").variants) == {"ov_fp32", "ov_int8"}


def test_calibration_sample_is_real_photos_and_sentences():
    from clipq.export import ExportInputs
    from clipq.export.calibration import PHOTOS, CalibrationSample

    s = CalibrationSample.builtin(per_photo=2)
    assert len(s.images) >= 2 * (len(PHOTOS) - 2)
    for a in s.images:
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 and min(a.shape[:2]) >= 8
    assert len({a.tobytes()[:4096] for a in s.images[::2]}) == len(s.images[::2])  # distinct photos
    for kind in ("clip", "lm", "prompt"):
        assert len(s.texts[kind]) >= 16 and all(" " in t for t in s.texts[kind])
    user = CalibrationSample.from_inputs(ExportInputs(images=["a.png"], calibration_images=["b.png"],
                                                      calibration_texts={"clip": ["a red circle"]}))
    assert user.images == ["b.png"] and user.texts["clip"] == ["a red circle"] and user.texts["lm"]
    assert CalibrationSample.from_inputs(None) is None


def test_export_writes_gated_openvino_variants(ov_artifacts):
    root, report = ov_artifacts
    m = Manifest.load(root)
    m.verify_all()
    passed = []
    for name in NETS:
        spec = m.model(name)
        assert spec.variants["ov_fp32"] == f"openvino/{name}.xml" and f"openvino/{name}.bin" in m.files
        assert spec.default_variant in ("fp32", "int8")  # onnxruntime's default stays an onnxruntime graph
        p = spec.parity["ov_fp32"]
        assert p["min_cos"] >= p["target_min_cos"] >= 0.998 and set(p["batches"]) == {"1", "8", str(spec.max_batch_size)}
        assert spec.meta["openvino"]["ov_fp32"]["precision"] in ("bf16", "f32")
        takes_pixels = any(t.name == "pixel_values" for t in spec.inputs)  # synthetic parity images: photos too
        assert ("held_out" in p) == takes_pixels and (not takes_pixels or p["held_out"]["min_cos"] >= p["target_min_cos"])
        assert "task_metrics" in p  # the task gate ran on it
        dec = spec.meta["export"]["decisions"]["openvino"]["ov_int8"]
        assert "calibration" in dec and dec["calibration"]["source"].startswith("built-in")
        if "ov_int8" in spec.variants:
            q = spec.parity["ov_int8"]
            assert q["meets_target"] and q["min_cos"] >= q["target_min_cos"] and "task_metrics" in q
            assert dec["chosen"] == q["recipe"] and q["task_metrics"]["recall@5"] >= -1.0  # the gate: at most a point lost
            assert (root / spec.variants["ov_int8"]).is_file()
            passed.append(name)
        else:  # refused: every recipe tried is recorded with its cosine, and the reason
            assert dec["rejected"].startswith("no NNCF recipe reaches cosine")
            assert all("cos_by_precision" in c or "skipped" in c for c in dec["candidates"].values())
            assert not any(k.startswith(f"openvino/{name}.int8") for k in m.files)
    assert passed, "NNCF int8 on real calibration should pass the gates for at least one network"
    assert "| clip_image | ov_fp32 |" in report.markdown()


def test_selection_records_cpu_default_and_connect_opens_it(ov_artifacts):
    root, report = ov_artifacts
    m = Manifest.load(root)
    host = cpu_facts()
    for name in NETS:
        rec = m.model(name).meta["cpu_default"]
        assert rec == report.selection[name]
        assert f"{rec['engine']}/{rec['variant']}" in rec["ms"] and set(rec["batches"]) == {1, 8}
        assert {"onnxruntime/fp32", "openvino/ov_fp32"} <= set(rec["ms"]) | set(rec["dropped"])
        assert all(v > 0 for per in rec["ms"].values() for v in per.values())
        if rec["engine"] == "openvino":  # the precision the winner was timed in, as the export checked it
            assert rec["precision"] == m.model(name).meta["openvino"][rec["variant"]]["precision"]
        for k, d in rec["dropped"].items():  # dropped only where over 2x the fastest at that batch
            b = max(d["ms"], key=int)
            assert d["ms"][b] > 2.0 * min(per[b] for per in rec["ms"].values()), (k, d)
        on = rec["measured_on"]
        assert on["cpu"] == host["cpu"] and on["threads"] == 1 and on["flags"] == host["flags"]
        assert {"amx_int8", "avx512_bf16", "avx512_vnni", "avx2"} <= set(on["flags"])
        assert rec["remeasure"].startswith("clipq tune-engines")
    backend = connect(root, threads=1)
    for name in NETS:
        rec = m.model(name).meta["cpu_default"]
        assert _route(backend, name) == (rec["engine"], rec["variant"])
    backend.close()


def _with_choice(root, tmp_path, choices, flags=None):
    """A copy of ``root`` whose manifest records ``choices`` (network -> (engine, variant)) as measured here."""
    dst = tmp_path / "chosen"
    shutil.copytree(root, dst)
    m = Manifest.load(dst)
    facts = cpu_facts(1)
    if flags:
        facts = {**facts, "cpu": "Some Other CPU", "flags": {**facts["flags"], **flags}}
    for name, (e, v) in choices.items():
        m.models[name].meta["cpu_default"] = {"engine": e, "variant": v, "measured_on": facts}
    m.save()
    return dst


def test_mixed_choice_routes_per_network(ov_artifacts, tmp_path):
    root = _with_choice(ov_artifacts[0], tmp_path, {"clip_image": ("openvino", "ov_fp32"),
                                                    "clip_text": ("onnxruntime", "int8")})
    backend = connect(root, threads=1)
    assert isinstance(backend, RoutedBackend)
    assert _route(backend, "clip_image") == ("openvino", "ov_fp32")
    assert _route(backend, "clip_text") == ("onnxruntime", "int8")
    vqa = Manifest.load(root).model("vqa").meta["cpu_default"]  # as the selection recorded it
    assert _route(backend, "vqa") == (vqa["engine"], vqa["variant"])
    from clipq.export.calibration import sample_photos

    enc = ClipEncoder(backend)
    ref = ClipEncoder(OrtBackend(root, variant="fp32", threads=1))
    imgs = list(sample_photos()[:4])
    assert compare(ref.encode_images(imgs), enc.encode_images(imgs))["min_cos"] >= 0.998
    assert compare(ref.encode_texts(["a cat", "a red bus"]), enc.encode_texts(["a cat", "a red bus"]))["min_cos"] >= 0.99
    backend.health()
    backend.close()


def test_choice_from_other_cpu_flags_falls_back_with_notice(ov_artifacts, tmp_path, caplog):
    host = cpu_facts()["flags"]
    other = {"amx_int8": not host["amx_int8"], "amx_bf16": not host["amx_bf16"]}
    root = _with_choice(ov_artifacts[0], tmp_path, {n: ("openvino", "ov_fp32") for n in NETS}, flags=other)
    with caplog.at_level(logging.WARNING, logger="clipq.runtime.engines"):
        backend = connect(root, threads=1)
    assert isinstance(backend, OrtBackend)
    m = Manifest.load(root)
    for name in NETS:
        assert backend.variant_for(name) == m.model(name).default_variant  # onnxruntime's own default
    text = caplog.text
    assert "Some Other CPU" in text and cpu_facts()["cpu"] in text and "amx_int8" in text
    assert f"clipq tune-engines {root}" in text


def test_choice_needing_missing_engine_falls_back(ov_artifacts, tmp_path, caplog, monkeypatch):
    root = _with_choice(ov_artifacts[0], tmp_path, {"clip_image": ("openvino", "ov_fp32")})
    for name in NETS[1:]:  # only clip_image records OpenVINO here
        m = Manifest.load(root)
        m.models[name].meta.pop("cpu_default", None)
        m.save()
    monkeypatch.setitem(ENGINES, "openvino", dataclasses.replace(ENGINES["openvino"], requires=("clipq_no_such_module",)))
    with caplog.at_level(logging.WARNING, logger="clipq.runtime.engines"):
        backend = connect(root, threads=1)
    assert isinstance(backend, OrtBackend) and "pip install 'clipq[openvino]'" in caplog.text


def test_tune_engines_command_rewrites_the_choice(ov_artifacts, tmp_path, capsys):
    from clipq.app.cli import main

    root = _with_choice(ov_artifacts[0], tmp_path, {"clip_image": ("openvino", "ov_fp32")})
    rc = main(["tune-engines", str(root), "--networks", "clip_image", "--batches", "1,2", "--rounds", "1",
               "--threads", "1", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    rec = Manifest.load(root).model("clip_image").meta["cpu_default"]
    assert out["clip_image"]["engine"] == rec["engine"] and rec["batches"] == [1, 2] and "measured_at" in rec


def test_timing_worker_reports_factory_errors():
    from clipq.export.timing import ProcessEngine, WorkerError

    with pytest.raises(WorkerError, match="no_such_function"):
        ProcessEngine("clipq.export.selection:no_such_function", {}, timeout_s=120)


def test_openvino_variants_must_also_meet_the_target_on_held_out_inputs(tiny_artifacts, tmp_path):
    from clipq.export.openvino import openvino_variants

    m, name = Manifest.load(tiny_artifacts), "clip_image"
    ort = OrtBackend(m, variant="fp32", threads=1)
    out = m.model(name).outputs[0].name
    samples = {b: _feeds(m, name, b) for b in (1, 4)}
    reference = {b: ort.infer(name, x)[out] for b, x in samples.items()}
    feeds = _feeds(m, name, 3)
    good = ort.infer(name, feeds)[out]
    fp32 = Path(tiny_artifacts) / m.model(name).file

    def run(held_out, where):
        return openvino_variants(name, fp32, tmp_path / where, samples, reference, lambda: ([], "none"),
                                 target=0.999, threads=1, int8=False, held_out=held_out)

    res = run((feeds, good), "good")
    assert "ov_fp32" in res.files and res.parity["ov_fp32"]["held_out"]["items"] == 3
    assert res.parity["ov_fp32"]["held_out"]["min_cos"] >= 0.999
    rotated = np.roll(good, 1, axis=1)  # outputs the graph does not give: the held-out inputs alone fail it
    res = run((feeds, rotated), "bad")
    assert "ov_fp32" not in res.files and "below 0.999" in res.decisions["ov_fp32"]["rejected"]
    assert not list((tmp_path / "bad").glob("*.bin"))  # a refused IR is not left behind


def test_selection_worker_reports_the_engine_and_precision(ov_artifacts):
    from clipq.export.selection import backend_runner

    root, _ = ov_artifacts
    m = Manifest.load(root)
    run, info = backend_runner(str(root), "clip_image", "openvino", "ov_fp32", threads=1)
    want = m.model("clip_image").meta["openvino"]["ov_fp32"]["precision"]
    assert info == {"engine": "openvino", "variant": "ov_fp32", "precision": want}
    assert run(_feeds(m, "clip_image", 2)).shape == (2, m.model("clip_image").outputs[0].shape[-1])


class _Timed:
    """Stands in for a timing worker: answers each call with a fixed time per batch and counts cells."""

    def __init__(self, ms: dict[str, float]):
        self.ms, self.cells = ms, []

    def time(self, path, calls=5, warmup=0, budget_s=None):
        self.cells.append(path)
        return np.full(calls, self.ms[path] / 1e3)


def test_alternating_drops_an_engine_over_the_limit_after_its_first_batch():
    from clipq.export.timing import alternating, completed

    feeds = {1: "b1", 8: "b8", 32: "b32"}
    def engines():
        return {"fast": _Timed({"b1": 10, "b8": 60, "b32": 200}), "close": _Timed({"b1": 19, "b8": 70, "b32": 150}),
                "slow": _Timed({"b1": 21, "b8": 400, "b32": 1600})}

    e = engines()
    full, dropped = completed(alternating(e, feeds, rounds=2, calls=3, pause_s=0, drop_over=2.0))
    assert set(full) == {"fast", "close"} and e["slow"].cells == ["b1"]  # 2.1x at batch 1: no further cells
    assert e["fast"].cells == e["close"].cells == ["b1", "b8", "b32"] * 2
    assert dropped == {"slow": {1: 21.0}}
    assert np.median(full["close"][32][1]) * 1e3 == pytest.approx(150)  # a close engine that wins later stays
    e = engines()
    full, dropped = completed(alternating(e, feeds, rounds=2, calls=3, pause_s=0))
    assert set(full) == set(e) and not dropped and all(len(t.cells) == 6 for t in e.values())


def test_task_gate_that_cannot_measure_a_variant_removes_it(ov_artifacts, tmp_path):
    from clipq.export import ExportOptions
    from clipq.export.pipeline import ExportReport, _task_parity

    root = tmp_path / "gate"
    shutil.copytree(ov_artifacts[0], root)
    m = Manifest.load(root)

    def ort_only(manifest, variants):  # like a metric function that opens OrtBackend whatever the variant
        if any(v.startswith("ov_") for v in variants.values()):
            raise BackendUnavailable("onnxruntime cannot open an OpenVINO IR")
        return {"recall@5": 50.0}

    had_int8 = any("int8" in m.model(n).variants for n in NETS)  # the fixture's own gate may have dropped it
    out = _task_parity(m, ExportOptions(openvino=True, task_metrics=ort_only), ExportReport(root))
    assert "ov_fp32" not in out and ("int8" in out) == had_int8
    for name in NETS:
        spec = m.model(name)
        assert "ov_fp32" not in spec.variants and "ov_int8" not in spec.variants
        assert not any(k.startswith("openvino/") for k in m.files)
        reason = spec.meta["export"]["decisions"]["openvino"]["ov_fp32"]["rejected"]
        assert reason.startswith("task gate:") and "OpenVINO IR" in reason
    assert not list((root / "openvino").glob("*.xml"))


def test_task_gate_drops_a_variant_that_loses_too_much_and_the_export_goes_on(tiny_artifacts, tmp_path):
    from clipq.export import ExportOptions, export_artifacts
    from clipq.export.pipeline import ExportReport, _task_parity
    from clipq.export.quantize import DYNAMIC, DYNAMIC_PER_CHANNEL
    from clipq.runtime.errors import ParityError

    src = tmp_path / "src"
    shutil.copytree(tiny_artifacts, src)
    # int8 graphs without a task gate; which recipe passes parity for which network depends on the CPU
    export_artifacts(src, ExportOptions(int8=True, int8_recipes=(DYNAMIC, DYNAMIC_PER_CHANNEL), networks=NETS,
                                        timing_rounds=1, threads=1))
    with_int8 = [n for n in NETS if "int8" in Manifest.load(src).model(n).variants]
    assert with_int8
    root = tmp_path / "gate"
    shutil.copytree(src, root)

    def int8_worse(manifest, variants):  # int8 loses 1.5 points, everything else is as good as fp32
        return {"recall@5": 48.5 if "int8" in variants.values() else 50.0}

    m = Manifest.load(root)
    report = ExportReport(root)
    out = _task_parity(m, ExportOptions(task_metrics=int8_worse), report)
    assert "int8" not in out and out["rejected"]["int8"]["why"] == "recall@5 50.00 -> 48.50"
    assert out["fp32"] == {"recall@5": 50.0}
    for name in with_int8:
        spec = m.model(name)
        assert "int8" not in spec.variants and spec.default_variant != "int8"
        assert spec.meta["export"]["rejected"]["int8"].startswith("task gate: recall@5")
    report.task_metrics = out
    assert "int8 not deployed" in report.markdown()
    strict = tmp_path / "strict"
    shutil.copytree(src, strict)
    with pytest.raises(ParityError, match="recall@5 50.00 -> 48.50"):
        _task_parity(Manifest.load(strict), ExportOptions(require_int8=True, task_metrics=int8_worse),
                     ExportReport(strict))
