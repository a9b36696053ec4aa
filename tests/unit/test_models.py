"""Forward shapes of every network for each preset, and the local-checkpoint (`--pretrained`) path."""

from __future__ import annotations

import pytest
import torch

from clipq.models.export_wrappers import ClipImageTower, ClipTextTower
from clipq.models.factory import PROMPT_DIM, build_clip, build_lm, get_preset
from clipq.models.img2prompt import EnsembleHead, PromptRegressorA
from clipq.models.vqa import VQAConfig, VQAModel, VQAProbs
from clipq.runtime.errors import ArtifactError, ClipqError


def _ids(b: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1000, 2000, (b, length))
    ids[:, 0], ids[:, -1] = 101, 102
    return ids, torch.ones_like(ids)


@pytest.mark.parametrize("preset", ["test", "tiny", "base"])
def test_forward_shapes(preset):
    pr = get_preset(preset)
    clip = build_clip(preset).eval()
    s = pr.clip_vision["image_size"]
    d = pr.projection_dim
    x = torch.randn(2, 3, s, s)
    ids, mask = _ids(2, 7)
    with torch.inference_mode():
        img = ClipImageTower(clip)(x)
        txt = ClipTextTower(clip)(ids, mask)
        assert img.shape == (2, d) and txt.shape == (2, d)
        assert torch.allclose(img.norm(dim=-1), torch.ones(2), atol=1e-5)
        a = PromptRegressorA(clip)(x)
        assert a.shape == (2, PROMPT_DIM)
        fused = EnsembleHead()(a, torch.randn(2, PROMPT_DIM), torch.full((2, 1), 0.3))
        assert torch.allclose(fused.norm(dim=-1), torch.ones(2), atol=1e-5)
        if preset != "tiny":  # tiny's LM is the packaged MiniLM (covered by the training smoke test)
            lm = build_lm(pr.lm)
            for use_mapper in (False, True):
                vqa = VQAModel(VQAConfig(embed_dim=d, n_answers=11, prefix_len=pr.vqa_prefix_len,
                                         use_mapper=use_mapper), lm).eval()
                p = VQAProbs(vqa)(img, ids, mask)
                assert p.shape == (2, 11)
                assert torch.allclose(p.sum(-1), torch.ones(2), atol=1e-5)


def test_vqa_mapper_shape_matches_paper():
    lm = build_lm("distilbert-tiny")
    v2 = VQAModel(VQAConfig(embed_dim=32, n_answers=5, prefix_len=3), lm)
    assert [type(m).__name__ for m in v2.mapper] == ["Linear", "ReLU", "Linear"]
    assert v2.mapper[0].out_features == 1024
    v1 = VQAModel(VQAConfig(embed_dim=32, n_answers=5, prefix_len=3, use_mapper=False), lm)
    assert isinstance(v1.mapper, torch.nn.Linear)


def test_pretrained_checkpoint_roundtrip(tmp_path):
    clip = build_clip("test", seed=3).eval()
    clip.save_pretrained(tmp_path / "ckpt")
    again = build_clip(pretrained=tmp_path / "ckpt").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(ClipImageTower(clip)(x), ClipImageTower(again)(x), atol=1e-6)


def test_stem_pool_flag_and_channels_last_survive_a_checkpoint(tmp_path):
    """The no-max-pool stem is a config flag: built, saved and loaded it keeps stage 1 at the stem's
    resolution; channels-last weights (how the trainers run) save and reload to the same features."""
    import dataclasses

    from clipq.models import factory
    from clipq.train.common import channels_last

    pr = get_preset("test")
    for pool in (True, False):
        name = f"test-pool-{pool}"
        factory.PRESETS[name] = dataclasses.replace(pr, name=name, clip_vision=dict(pr.clip_vision, clipq_stem_pool=pool))
        try:
            clip = build_clip(name, seed=1).eval()
        finally:
            del factory.PRESETS[name]
        x = torch.randn(3, 3, 32, 32)
        with torch.inference_mode():
            maps = clip.vision_model(pixel_values=x, output_hidden_states=True).hidden_states
            ref = ClipImageTower(clip)(x)
        # 32 px: stem conv /2, then the max-pool /2 or not
        assert maps[0].shape[-1] == (8 if pool else 16)
        channels_last(clip)
        assert clip.vision_model.embedder.embedder.convolution.weight.is_contiguous(memory_format=torch.channels_last)
        clip.save_pretrained(tmp_path / f"ckpt-{pool}")
        again = build_clip(pretrained=tmp_path / f"ckpt-{pool}").eval()
        assert isinstance(again.vision_model.embedder.pooler, torch.nn.MaxPool2d) is pool
        with torch.inference_mode():
            assert torch.allclose(ClipImageTower(again)(x), ref, atol=1e-5)
            assert torch.allclose(ClipImageTower(clip)(x), ref, atol=1e-5)  # channels-last: same numbers


def test_pretrained_path_through_artifacts(tmp_path):
    """A real-checkpoint directory (with its own tokenizer.json) initialises an artifact directory."""
    import shutil

    from clipq.models.factory import wordpiece_tokenizer_file
    from clipq.models.io import init_clip_artifacts

    clip = build_clip("test", seed=1)
    clip.save_pretrained(tmp_path / "real")
    shutil.copy(wordpiece_tokenizer_file(), tmp_path / "real" / "tokenizer.json")
    m, loaded = init_clip_artifacts(tmp_path / "art", pretrained=tmp_path / "real")
    assert m.preprocessing["size"] == 32 and m.dims["clip_embed"] == 32
    assert m.tokenizers["clip"]["max_length"] == clip.config.text_config.max_position_embeddings
    assert m.extra["pretrained"] == str(tmp_path / "real")


def test_bad_checkpoint_and_preset_errors(tmp_path):
    with pytest.raises(ArtifactError, match="no config.json"):
        build_clip(pretrained=tmp_path)
    with pytest.raises(ClipqError, match="unknown preset"):
        get_preset("huge")
