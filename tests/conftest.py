"""Shared session fixtures: one small synthetic world, one set of quickly trained test-preset artifacts."""

from __future__ import annotations

import os

import pytest
from _require import SWITCH, require_module, required

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_report_header(config):
    if required():
        return f"{SWITCH}=1: a missing package, libpython or browser that `make install` provides fails its tests"
    return f"{SWITCH} unset: tests whose packages or system pieces are missing are skipped (make test sets it)"


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    from clipq.world import generate_world

    root = tmp_path_factory.mktemp("world")
    generate_world(root, seed=0, size="small", progress=False)
    return root


@pytest.fixture(scope="session")
def trained_artifacts(tmp_path_factory, small_world):
    """Every task trained for a few steps at the `test` preset (seconds, not minutes)."""
    from clipq.train.pipeline import TrainSettings, train_tasks

    out = tmp_path_factory.mktemp("artifacts") / "a"
    s = TrainSettings(
        preset="test", clip_steps=4, batch_size=32, questions_per_epoch=64, img2prompt_epochs=1,
        reading_steps=2, threads=2, progress=False,
    )
    summary = train_tasks(str(small_world), str(out), ["clip", "vqa", "img2prompt", "reading"], s)
    return out, summary


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory, trained_artifacts):
    """The one shared deployable artifact directory: the test-preset models trained above, exported.

    fp32 + int8 graphs of every network (dynamic int8 only, small parity batches: seconds), the
    tokenizers, preprocessing, answer vocabulary and Model B's KNN database. Treat it as read-only;
    a test that changes files takes ``tiny_artifacts_copy``.
    """
    import shutil

    from clipq.export import ExportOptions, export_artifacts
    from clipq.export.quantize import DYNAMIC

    root = tmp_path_factory.mktemp("tiny") / "artifacts"
    shutil.copytree(trained_artifacts[0], root)
    export_artifacts(root, ExportOptions(int8=True, int8_recipes=(DYNAMIC,), parity_batches=(1, 4), timing_rounds=2))
    return root


@pytest.fixture(scope="session")
def cpu_repo(tiny_artifacts, tmp_path_factory):
    """The cpu-python Triton repository rendered from ``tiny_artifacts`` with default options (read-only)."""
    from clipq.serving import render_repository

    return render_repository(tiny_artifacts, tmp_path_factory.mktemp("repo") / "models")


@pytest.fixture
def tiny_artifacts_copy(tiny_artifacts, tmp_path):
    """A private copy of ``tiny_artifacts`` that a test may change."""
    import shutil

    dst = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_ov_artifacts(tmp_path_factory, tiny_artifacts):
    """A copy of ``tiny_artifacts`` whose CLIP towers record an OpenVINO CPU default measured on this host.

    ``clip_image`` and ``clip_text`` get an ``ov_fp32`` IR (``openvino.convert_model`` of their fp32
    graph, checked in f32) and ``meta["cpu_default"] = openvino/ov_fp32`` with this machine's CPU
    facts, as ``clipq tune-engines`` records a winner (without timing anything: seconds). Read-only.
    """
    import shutil

    require_module("openvino")
    from clipq.export.openvino import OV_DIR, to_ir
    from clipq.runtime.backends.common import cpu_facts
    from clipq.runtime.manifest import Manifest

    root = tmp_path_factory.mktemp("tiny_ov") / "artifacts"
    shutil.copytree(tiny_artifacts, root)
    m = Manifest.load(root)
    for name in ("clip_image", "clip_text"):
        spec = m.models[name]
        xml = f"{OV_DIR}/{name}.xml"
        to_ir(m.resolve(spec.file), root / xml)
        m.add_file(xml)
        m.add_file(f"{OV_DIR}/{name}.bin")
        spec.variants["ov_fp32"] = xml
        spec.meta["openvino"] = {"ov_fp32": {"precision": "f32"}}
        spec.meta["cpu_default"] = {"engine": "openvino", "variant": "ov_fp32", "precision": "f32",
                                    "measured_on": cpu_facts()}
    m.save()
    return root
