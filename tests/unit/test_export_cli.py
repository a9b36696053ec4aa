"""``clipq export`` on the command line: report, manifest, TensorRT without a GPU, artifact errors."""

from __future__ import annotations

import json
import shutil

import pytest
from _require import require_module

require_module("torch")
require_module("transformers")

from clipq.app.cli import main  # noqa: E402
from clipq.runtime.manifest import Manifest  # noqa: E402


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from clipq.models.io import build_random_artifacts

    root = tmp_path_factory.mktemp("cli") / "artifacts"
    build_random_artifacts(root, "test")
    return root


def test_export_command_prints_parity_and_says_no_tensorrt(artifacts, capsys):
    rc = main(["export", str(artifacts), "--networks", "clip_image,ensemble_head", "--int8", "--tensorrt",
               "--parity-batches", "1,2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| clip_image | fp32 |" in out and "| ensemble_head | fp32 |" in out
    if shutil.which("nvidia-smi") is None:
        assert "TensorRT: nothing built (no NVIDIA GPU visible" in out
    m = Manifest.load(artifacts)
    assert set(m.models) >= {"clip_image", "ensemble_head"}
    assert set(m.model("clip_image").parity["fp32"]["batches"]) == {"1", "2"}
    assert m.extra["export"]["options"]["int8"] is True


def test_export_command_json(artifacts, capsys):
    assert main(["export", str(artifacts), "--networks", "ensemble_head", "--json", "--parity-batches", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["networks"]["ensemble_head"]["parity"]["fp32"]["passed"] is True


def test_export_refuses_a_broken_artifact_naming_the_file(artifacts, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(artifacts, broken)
    (broken / "checkpoints" / "clip" / "config.json").unlink()
    assert main(["export", str(broken), "--networks", "clip_image"]) == 2
    assert "checkpoints/clip/config.json" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nowhere")]) == 2
    assert "artifact directory not found" in capsys.readouterr().err
