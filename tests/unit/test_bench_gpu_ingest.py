"""The prepared GPU ingest script: its preprocessing on CPU tensors, and a clear refusal without CUDA."""

from __future__ import annotations

import numpy as np
import pytest
from _require import require_module


def test_gpu_preprocess_matches_clipq_preprocessing():
    """The on-device resize + crop + normalise is CLIP's: within the runtime's pixels on a photo-like image."""
    torch = require_module("torch")  # the GPU script's own dependency (the train extra's torch)
    from PIL import Image

    from clipq.app.bench.gpu_ingest import MEAN, STD, gpu_preprocess
    from clipq.runtime.preprocess import ImagePreprocessor

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (12, 16, 3)).astype(np.uint8)  # smooth content, upscaled: a photo's spectrum
    img = Image.fromarray(base).resize((640, 480), Image.Resampling.BICUBIC)
    got = gpu_preprocess([torch.from_numpy(np.array(img)).permute(2, 0, 1)]).numpy()
    want = ImagePreprocessor(224, mean=MEAN, std=STD, draft=False)([img])
    assert got.shape == want.shape == (1, 3, 224, 224)
    # PyTorch's bicubic kernel (a = -0.75) is not Pillow's (a = -0.5): measured 0.032 normalised units
    # (about 2.2/255 of a pixel) and cosine 0.9989; a wrong crop, scale or channel order is far beyond
    assert float(np.abs(got - want).mean()) < 0.05
    cos = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
    assert cos > 0.998


def test_gpu_script_refuses_clearly_without_cuda(capsys, tmp_path):
    torch = require_module("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the refusal is for machines without one")
    from clipq.app.bench.gpu_ingest import main

    assert main(["--out", str(tmp_path / "gpu"), "--budget-s", "5"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "GPU machine" in err
    assert not (tmp_path / "gpu").exists()  # nothing half-written
