"""Training smoke runs of every task on the small world, the evaluation, and the CLI entry points."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipq.app.cli import main
from clipq.runtime.manifest import Manifest


def test_training_writes_every_checkpoint(trained_artifacts, small_world):
    out, summary = trained_artifacts
    m = Manifest.load(out)
    for name in ("clip", "vqa_v1", "vqa_v2", "vqa_v3", "vqa_v4", "img2prompt_a", "clip_reading"):
        assert name in m.checkpoints, name
        m.resolve_dir(m.checkpoints[name])  # hashes verified
    assert set(summary["vqa"]) == {"v1", "v2", "v3", "v4"}
    from clipq.readers import World

    types = [q.qtype for q in World(small_world).split("test").questions]
    counts = {t: types.count(t) for t in set(types)}
    for r in summary["vqa"].values():
        assert {"object", "number", "color", "location"} <= set(r)
        # overall is the question-weighted mean of the per-type accuracies
        weighted = sum(r[t] * n for t, n in counts.items() if t in r) / sum(counts.values())
        assert r["overall"] == pytest.approx(weighted, abs=1e-6)
        assert np.isfinite(r["final_loss"])
    assert m.answer_vocab and m.extra["vqa"]["export_variant"] in {"v1", "v2", "v3", "v4"}
    i2p = summary["img2prompt"]
    # all-MiniLM-L6-v2 space: a model that predicts in another space (or unnormalised) scores near 0
    assert i2p["A"] > 0.5 and i2p["B"] > 0.5
    # alpha and K are the best cell of the validation sweep
    rows = i2p["sweep_val"]["rows"]
    best = max(rows, key=lambda r: r["score"])
    assert (i2p["alpha"], i2p["k"]) == (best["alpha"], best["k"])
    assert i2p["ensemble"] >= max(i2p["A"], i2p["B"]) - 0.05  # alpha tuned on val, scored on test
    assert (out / "knn").is_dir() and m.extra["img2prompt"]["k"] >= 1
    assert summary["reading"]["candidates"] >= 2


def test_prompt_targets_are_real_minilm(trained_artifacts):
    """The img2prompt targets are all-MiniLM-L6-v2 mean-pooled embeddings: compared with reference
    embeddings recorded once with sentence-transformers (tests/data/minilm_reference.json says how)."""
    from pathlib import Path

    from clipq.train.img2prompt import prompt_embeddings

    ref = json.loads((Path(__file__).parents[1] / "data" / "minilm_reference.json").read_text())
    out, _ = trained_artifacts
    ours = prompt_embeddings(Manifest.load(out), ref["texts"]).numpy()
    assert ours.shape == (2, 384)
    assert np.abs(ours - np.asarray(ref["embeddings"], np.float32)).max() < 1e-4


def test_eval_cli_prints_table_and_writes_json(trained_artifacts, small_world, tmp_path, capsys):
    out, _ = trained_artifacts
    dest = tmp_path / "eval.json"
    assert main(["eval", str(out), "--data", str(small_world), "--json", str(dest)]) == 0
    printed = capsys.readouterr().out
    assert "VQA accuracy" in printed and "R@5" in printed and "mean cosine" in printed
    res = json.loads(dest.read_text())
    for name in ("single", "ensemble"):
        r = res["retrieval"][name]
        assert 0 <= r["R@1"] <= r["R@5"] <= r["R@10"] <= 100
        assert r["R@10"] > 0  # 50 test images: R@10 of 0 would mean the ranking is broken
    # the templates of the evaluation are the ones search serves (one home: clipq.runtime.templates)
    from clipq.runtime.templates import DEFAULT_TEMPLATES, SINGLE_TEMPLATE

    assert res["retrieval"]["templates"] == {"single": SINGLE_TEMPLATE, "ensemble": list(DEFAULT_TEMPLATES)}


def test_train_cli_single_variant(small_world, trained_artifacts, tmp_path):
    """`clipq train vqa --variant v3` continues v2 from the artifacts; an unknown variant is refused."""
    import shutil

    src, _ = trained_artifacts
    art = tmp_path / "a"
    shutil.copytree(src, art)
    rc = main(["train", "vqa", "--data", str(small_world), "--out", str(art), "--variant", "v3",
               "--questions-per-epoch", "32", "--quiet", "--threads", "2"])
    assert rc == 0
    assert "vqa_v3" in Manifest.load(art).checkpoints
    assert main(["train", "vqa", "--data", str(small_world), "--out", str(art), "--variant", "v9", "--quiet"]) == 2


def test_train_missing_data_is_a_clear_error(tmp_path, capsys):
    rc = main(["train", "clip", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "a"), "--preset", "test",
               "--steps", "1", "--quiet"])
    assert rc == 2
    assert "nope" in capsys.readouterr().err


def test_kmeans_groups_similar_vectors():
    import torch

    from clipq.train.clip import kmeans

    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.tensor([1.0, 0, 0]) + 0.05 * torch.randn(20, 3, generator=g), dim=-1)
    b = torch.nn.functional.normalize(torch.tensor([0, 1.0, 0]) + 0.05 * torch.randn(20, 3, generator=g), dim=-1)
    labels = kmeans(torch.cat([a, b]), 2, seed=0)
    assert len(set(labels[:20].tolist())) == 1 and len(set(labels[20:].tolist())) == 1
    assert labels[0] != labels[20]


def test_hard_negative_batches_come_from_one_cluster():
    """Half of a mined batch comes from one cluster; a random batch of the same size does not."""
    from clipq.train.clip import _sample_batch

    clusters = [np.arange(i, i + 10) for i in range(0, 100, 10)]  # ten clusters of ten

    def most_in_one(cl, seed):
        idx = _sample_batch(np.random.default_rng(seed), 100, 16, cl, 0.5)
        assert len(idx) == len(set(idx.tolist())) == 16
        return max(np.isin(idx, c).sum() for c in clusters)

    mined = [most_in_one(clusters, s) for s in range(200)]
    random = [most_in_one(None, s) for s in range(200)]
    assert min(mined) >= 8  # 8 of 16 drawn from one cluster, always
    assert np.mean(random) < 5  # 16 random of 100 put about 3-4 in the fullest of ten clusters


def test_vqa_accuracy_by_type_counts_each_type():
    import torch

    from clipq.train.vqa import EncodedQA, accuracy_by_type

    fields = {f: None for f in EncodedQA.__dataclass_fields__}
    qa = EncodedQA(**{**fields, "labels": torch.tensor([0, 1, 2, 3]),
                      "qtypes": ["color", "color", "number", "object"]})
    acc = accuracy_by_type(np.array([0, 0, 2, 1]), qa)
    assert acc == {"overall": 50.0, "color": 50.0, "number": 100.0, "object": 0.0}


def test_vqa_variants_chain_with_pretrained_minilm(small_world, tmp_path):
    """The embedded default's LM (packaged all-MiniLM-L6-v2): v2 -> v3 continues the same weights."""
    from clipq.models.io import build_random_artifacts, load_vqa
    from clipq.train.vqa import VQATrainConfig, train_vqa

    m = build_random_artifacts(tmp_path / "a", "tiny", answers=[])
    m.answer_vocab = []
    m.save()
    res = train_vqa(str(small_world), str(tmp_path / "a"), variants=["v2", "v3"],
                    cfg=VQATrainConfig(questions_per_epoch=16, batch_size=8), threads=2, progress=False)
    assert set(res) >= {"v2", "v3"}
    m = Manifest.load(tmp_path / "a")
    v2, v3 = load_vqa(m, "v2"), load_vqa(m, "v3")
    assert type(v3.lm).__name__ == "BertModel"
    # v3 trained the LM (lr 1e-5) on top of v2: the LM weights moved, the architecture did not
    w2 = v2.lm.encoder.layer[0].attention.self.query.weight
    w3 = v3.lm.encoder.layer[0].attention.self.query.weight
    assert w2.shape == w3.shape and not np.allclose(w2.detach().numpy(), w3.detach().numpy())
