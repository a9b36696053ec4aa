"""Shared session fixtures: one small synthetic world, one set of quickly trained test-preset artifacts."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
