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
    for name in ("clip", "vqa_v1", "vqa_v2", "vqa_v3", "vqa_v4", "vqa_v2t", "img2prompt_a", "clip_reading"):
        assert name in m.checkpoints, name
        m.resolve_dir(m.checkpoints[name])  # hashes verified
    assert set(summary["vqa"]) == {"v1", "v2", "v3", "v4", "v2t"}
    from clipq.readers import World

    types = [q.qtype for q in World(small_world).split("test").questions]
    counts = {t: types.count(t) for t in set(types)}
    for r in summary["vqa"].values():
        assert {"object", "number", "color", "location"} <= set(r)
        # overall is the question-weighted mean of the per-type accuracies
        weighted = sum(r[t] * n for t, n in counts.items() if t in r) / sum(counts.values())
        assert r["overall"] == pytest.approx(weighted, abs=1e-6)
        assert np.isfinite(r["final_loss"])
    assert m.answer_vocab and m.extra["vqa"]["export_variant"] in {"v1", "v2", "v3", "v4", "v2t"}
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


def _recall_counted(q: np.ndarray, img: np.ndarray) -> dict[str, float]:
    """Text -> image Recall@1/5/10 (query i's image is image i), counted from a stable argsort."""
    order = np.argsort(-(q @ img.T), axis=1, kind="stable")
    return {f"R@{k}": 100.0 * sum(i in order[i, :k] for i in range(len(q))) / len(q) for k in (1, 5, 10)}


def test_eval_cli_prints_table_and_writes_json(trained_artifacts, tiny_artifacts, small_world, tmp_path, capsys):
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
    # recomputed: the same trained CLIP, exported (tiny_artifacts), through the torch-free runtime, and
    # the recall counted here; one query's worth of slack (PyTorch and onnxruntime may break a near tie apart)
    import clipq.runtime as rt
    from clipq.readers import World
    from clipq.runtime.templates import DEFAULT_TEMPLATES, SINGLE_TEMPLATE, embed_texts

    split = World(small_world, check_images=False).split("test")
    first: dict[str, str] = {}
    for c in split.captions:
        first.setdefault(c.image, c.text)
    ids = [i for i in split.image_ids if i in first]
    assert res["retrieval"]["queries"] == len(ids)
    with rt.connect(tiny_artifacts, variant="fp32") as b:
        enc = rt.ClipEncoder(b)
        img = enc.encode_images([split.path_of(i) for i in ids])
        want = {"single": _recall_counted(embed_texts(enc, [first[i] for i in ids], (SINGLE_TEMPLATE,)), img),
                "ensemble": _recall_counted(embed_texts(enc, [first[i] for i in ids], DEFAULT_TEMPLATES), img)}
    for name, w in want.items():
        for k, v in w.items():
            assert res["retrieval"][name][k] == pytest.approx(v, abs=100.0 / len(ids) + 1e-9), (name, k, res, want)
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


# -- issue 12: precision, hard negatives, the new rows ------------------------------------------------
def test_precision_follows_the_cpu_flags(monkeypatch):
    from clipq.runtime.errors import ClipqError
    from clipq.train import common

    monkeypatch.setattr(common, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert common.resolve_precision("auto") == "bf16"
    monkeypatch.setattr(common, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert common.resolve_precision("auto") == "fp32"  # emulated bf16 is slower than fp32
    assert common.resolve_precision("bf16") == "bf16" and common.resolve_precision("fp32") == "fp32"
    with pytest.raises(ClipqError, match="precision"):
        common.resolve_precision("fp8")


def test_swapped_captions_change_one_word_of_a_class():
    from clipq.train.negatives import WORD_CLASSES, swap_word, swapped_captions

    rng = np.random.default_rng(0)
    text = "two red circles on the left and a blue star at the top"
    for _ in range(50):
        s = swap_word(text, rng)
        a, b = text.split(), s.split()
        diff = [(x, y) for x, y in zip(a, b) if x != y]
        assert len(a) == len(b) and len(diff) == 1, s
        old, new = diff[0]
        assert any(old in ws and new in ws for ws in WORD_CLASSES.values()), diff
    assert swap_word("a picture of nothing much", rng) is None
    neg, rows = swapped_captions(["three green hearts", "hello there", "one ring in the center"], rng)
    assert list(rows) == [0, 2] and len(neg) == 2


def test_mirror_augmentation_swaps_left_and_right_with_the_image():
    import torch

    from clipq.train.augment import augment_batch, mirror_caption
    from clipq.world import render_scene

    assert mirror_caption("Left of two red stars, right side") == "Right of two red stars, left side"
    assert mirror_caption("bright lights at the top") == "bright lights at the top"  # whole words only
    # a real scene: a group "on the left" lies in the right half of the mirrored image, and its caption says so
    scene, img = next((s, i) for s, i in (render_scene(0, "train", k) for k in range(50))
                      if s.place == "left" and s.distractor is None)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)[None].repeat(8, 1, 1, 1)
    texts = [next(c for c in scene.captions if "left" in c)] * 8
    rng = np.random.default_rng(1)
    out, new = augment_batch(x, texts, rng, "mirror")
    flipped = [t != texts[0] for t in new]
    assert 0 < sum(flipped) < 8 and torch.equal(x[0], x[1])  # the input is left as it was
    for o, t, f in zip(out, new, flipped):
        assert torch.equal(o, x[0].flip(-1) if f else x[0])
        assert ("right" in t and "left" not in t) if f else t == texts[0]
    shifted, _ = augment_batch(x, texts, rng, "mirror_shift", shift=3)
    assert shifted.shape == x.shape and not torch.equal(shifted, out)
    with pytest.raises(ValueError, match="unknown augmentation 'rotate'"):
        augment_batch(x, texts, rng, "rotate")


def test_caption_words_targets_and_loss_learn_the_words(small_world, trained_artifacts, tmp_path):
    import torch

    from clipq.models.io import load_tokenizer
    from clipq.runtime.errors import ClipqError
    from clipq.train.clip import CaptionWords, ClipTrainConfig, train_clip

    tok = load_tokenizer(Manifest.load(trained_artifacts[0]), "clip")
    words = CaptionWords(tok, ["two red circles on the left", "a blue star at the top"], 16)
    t = words.targets(["red star", "hello green", ""])
    assert t.shape == (3, len(words.column)) and t.sum(1).tolist() == [2.0, 0.0, 0.0]  # unseen pieces ignored
    torch.manual_seed(0)
    img = torch.randn(4, 16, requires_grad=True)
    texts = ["red star", "blue circles", "red star", "blue circles"]
    opt = torch.optim.Adam([img, *words.head.parameters()], lr=0.05)
    first = words.loss(img, texts).item()
    for _ in range(100):
        loss = words.loss(img, texts)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
    # both options run inside the trainer and are recorded
    cfg = ClipTrainConfig(steps=2, batch_size=16, word_loss=1.0, augment="mirror_shift", hard_negatives=False)
    summary = train_clip(str(small_world), str(tmp_path / "a"), preset="test", cfg=cfg, progress=False)
    assert summary["config"]["word_loss"] == 1.0 and summary["config"]["augment"] == "mirror_shift"
    assert np.isfinite(summary["final_loss"])
    with pytest.raises(ClipqError, match="unknown augmentation 'rotate'"):
        train_clip(str(small_world), str(tmp_path / "b"), preset="test", cfg=ClipTrainConfig(steps=1, augment="rotate"),
                   progress=False)


def test_clip_loss_is_clips_and_extra_negatives_only_add():
    import torch

    from clipq.train.clip import clip_loss

    g = torch.Generator().manual_seed(0)
    img, txt, neg = (torch.randn(8, 16, generator=g) for _ in range(3))
    scale = torch.tensor(10.0)
    logits = scale * torch.nn.functional.normalize(txt, dim=-1) @ torch.nn.functional.normalize(img, dim=-1).T
    labels = torch.arange(8)
    ref = 0.5 * (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels))
    assert clip_loss(img, txt, scale).item() == pytest.approx(ref.item(), rel=1e-5)
    assert clip_loss(img, txt, scale, neg).item() > ref.item()


def test_caption_clusters_group_captions_that_share_words():
    from clipq.train.negatives import caption_clusters

    caps = [[f"{n} red circles on the left"] for n in ("two", "three", "four", "one")] * 3 + \
           [[f"{n} blue stars at the top"] for n in ("two", "three", "four", "one")] * 3
    groups = caption_clusters(caps, size=12, seed=0)
    assert sorted(len(g) for g in groups) == [12, 12]
    assert all(len({"red" in caps[i][0] for i in g}) == 1 for g in groups)


def test_word_class_groups_differ_only_in_the_varied_class():
    from clipq.train.negatives import word_class_groups

    kinds = ("circles", "stars", "rings", "hearts")
    caps = [[f"two red {k} on the left", f"2 red {k} in the middle"] for k in kinds] + \
           [[f"two red {k} on the left", f"two red {k} at the center"] for k in kinds] + \
           [[f"three blue {k} at the top"] for k in kinds] + [["a picture"]] + [["one green cross on the right"]]
    groups = word_class_groups(caps, vary="shape")
    # digits / number words, "middle" / "center" and plural / singular key alike; the lone green
    # cross is a group of one (dropped) and "a picture" has no class word at all
    assert sorted(sorted(g.tolist()) for g in groups) == [list(range(8)), list(range(8, 12))]
    by_count = word_class_groups([["two red circles on the left"], ["three red circles on the left"],
                                  ["4 red circles on the left"], ["one red circle on the left"],
                                  ["two red stars on the left"]], vary="count")
    assert [g.tolist() for g in by_count] == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="unknown word class 'size'"):
        word_class_groups(caps, vary="size")


def test_sample_batch_with_no_groups_draws_at_random():
    from clipq.train.clip import _sample_batch

    idx = _sample_batch(np.random.default_rng(0), 50, 16, [], 0.5, 8)
    assert len(set(idx.tolist())) == 16 and idx.max() < 50
    groups = [np.arange(10), np.arange(10, 20)]
    idx = _sample_batch(np.random.default_rng(0), 50, 16, groups, 0.5, 4)
    assert len(set(idx.tolist())) == 16 and sum(int(i) < 20 for i in idx[:8]) == 8


def test_clip_training_records_precision_and_curve(trained_artifacts):
    out, summary = trained_artifacts
    c = summary["clip"]
    assert c["precision"] in ("fp32", "bf16") and c["steps_per_s"] > 0
    assert c["loss_curve"] and c["loss_curve"][-1]["step"] == c["steps"]
    assert Manifest.load(out).extra["training"]["clip"]["config"]["batch_mode"] in ("random", "caption_clusters",
                                                                                    "image_clusters")


def test_vqa_equal_time_control_and_default_chosen_on_val(trained_artifacts):
    out, summary = trained_artifacts
    res = summary["vqa"]
    assert set(res) == {"v1", "v2", "v3", "v4", "v2t"}
    # the control trains (LM frozen) for as long as v3's epoch took, from v2
    assert res["v2t"]["train_seconds"] >= 0.9 * res["v3"]["train_seconds"] and res["v2t"]["steps"] >= 1
    m = Manifest.load(out)
    extra = m.extra["vqa"]
    assert extra["export_variant_chosen_on"] == "val"
    best = max(res, key=lambda v: res[v]["val"]["overall"])
    assert extra["export_variant"] == best and extra["lm"] == "distilbert-tiny"


def test_every_vqa_variant_loads_for_export(trained_artifacts):
    import torch

    from clipq.models.io import load_for_export

    out, summary = trained_artifacts
    for v in summary["vqa"]:
        net = load_for_export(out, vqa_variant=v)["vqa"]
        probs = net(torch.randn(2, Manifest.load(out).dims["clip_embed"]), torch.ones(2, 5, dtype=torch.long),
                    torch.ones(2, 5, dtype=torch.long))
        assert probs.shape[0] == 2 and torch.allclose(probs.sum(-1), torch.ones(2), atol=1e-4)


def test_img2prompt_filter_sweep(trained_artifacts):
    out, summary = trained_artifacts
    f = summary["img2prompt"]["filter"]
    rows = f["sweep"]
    assert rows[0]["threshold"] is None and rows[0]["kept_share"] == 1.0
    kept = [r["kept_share"] for r in rows]
    assert kept == sorted(kept, reverse=True) and len(rows) >= 3
    assert f["threshold"] in [r["threshold"] for r in rows] and f["chosen_on"] == "val"
    assert f["mismatched_in_train"] >= 1 and 0 <= f["mismatched_kept"] <= f["mismatched_in_train"]
    for r in rows:
        assert 0.0 <= r["wrong_dropped"] <= 1.0
        for split in ("val", "test"):
            assert set(r[split]) == {"A_head", "B", "ensemble"}


def test_reading_rows_and_list_sizes(trained_artifacts):
    out, summary = trained_artifacts
    r = summary["reading"]
    rows = ("naive", "hard_images", "hard_texts", "hard_both", "synthetic", "synthetic_ce")
    assert {"zero_shot", *rows, "crops"} <= set(r["rows"])
    assert r["fine_tuned_row"] in rows
    ce = r["rows"]["synthetic_ce"]  # the world's training words + 15x as many synthetic ones
    assert ce["images"] == r["train_items"] + round(15 * r["train_items"]) and ce["steps"] == r["steps"]
    assert ce["text_steps"] == r["steps"]  # both stages follow reading_steps unless set apart
    assert np.isfinite(ce["loss_first"]) and np.isfinite(ce["loss_last"]) and np.isfinite(ce["text_loss_last"])  # learning: the test below
    assert r["chance"] == pytest.approx(100 / r["candidates"])
    m = Manifest.load(out)
    assert "clip_reading" in m.checkpoints and m.extra["reading"]["candidates"]
    assert len(m.extra["reading"]["candidates"]) == r["candidates"]


def test_candidate_cross_entropy_learns_to_tell_words_apart():
    """The synthetic_ce objective fits a handful of word images that CLIP could not tell apart.

    Both stages must work: stage 1 fits the image tower to the anchors, stage 2 moves them into the
    text tower; the read goes through the text tower only, so a stage 2 that did not learn fails it.
    """
    import torch
    from tokenizers import Tokenizer

    from clipq.models.factory import build_clip, wordpiece_tokenizer_file
    from clipq.train.reading import ReadingConfig, candidate_scores, fine_tune_candidates

    tok = Tokenizer.from_file(str(wordpiece_tokenizer_file()))
    tok.enable_truncation(max_length=32)
    tok.enable_padding(pad_id=0)  # to the batch's longest (the file pads to 128)
    clip = build_clip("test", seed=0).eval()
    torch.manual_seed(0)
    cands = ["stop", "open", "exit", "sale"]
    px = torch.randn(8, 3, 32, 32)
    words, qs = [cands[i % 4] for i in range(8)], ["what does it say ?"] * 8
    y = np.array([i % 4 for i in range(8)])
    assert (candidate_scores(clip, tok, px, qs, cands).argmax(1) == y).mean() < 1.0  # not read before
    cfg = ReadingConfig(ce_steps=60, ce_batch_size=8, ce_warmup=5, ce_lr=3e-3, ce_text_steps=60, precision="fp32")
    model, curves = fine_tune_candidates(clip, tok, px, words, qs, cands, cfg, "fp32")
    for stage in ("image", "text"):
        assert len(curves[stage]) == 60 and np.mean(curves[stage][-5:]) < 0.5 * np.mean(curves[stage][:5]), stage
    assert (candidate_scores(model, tok, px, qs, cands).argmax(1) == y).mean() == 1.0


def test_list_size_accuracy_and_crops():
    import torch

    from clipq.train.reading import _crops, list_size_accuracy

    y = np.arange(40) % 40
    perfect = np.eye(40)[y]
    assert list_size_accuracy(perfect, y, sizes=(2, 40)) == {2: 100.0, 40: 100.0}
    rnd = np.random.default_rng(0).random((2000, 40))
    acc = list_size_accuracy(rnd, np.zeros(2000, int), sizes=(2, 10))
    assert abs(acc[2] - 50) < 4 and abs(acc[10] - 10) < 3
    views = _crops(torch.randn(3, 3, 32, 32), 0.75)
    assert len(views) == 9 and all(v.shape == (3, 3, 32, 32) for v in views)


def test_eval_rows_use_the_runtime_templates(trained_artifacts, small_world):
    from clipq.evaluate import evaluate
    from clipq.runtime.templates import TEMPLATE_SETS

    out, _ = trained_artifacts
    res = evaluate(str(out), str(small_world), out_json=str(out / "eval_rows.json"))
    r = res["retrieval"]
    assert set(r["template_rows"]) == set(TEMPLATE_SETS) and set(r["no_punctuation"]) == {"single", "ensemble"}
    assert set(r["descriptions"]) >= {"first", "mean_of_captions", "joined"}
    assert r["descriptions"]["first"] == r["single"] and r["template_rows"]["a photo of"] == r["single"]


def test_dual_encoder_baseline_trains_and_is_evaluated(trained_artifacts, small_world, tmp_path):
    import shutil

    from clipq.evaluate import evaluate
    from clipq.train.baseline import BaselineConfig, train_baseline

    art = tmp_path / "a"
    shutil.copytree(trained_artifacts[0], art)
    s = train_baseline(str(small_world), str(art), cfg=BaselineConfig(steps=3, batch_size=16, text_layers=1,
                                                                       resnet_hidden=(8, 16)), threads=2, progress=False)
    assert s["steps"] == 3 and "dual_encoder" in Manifest.load(art).checkpoints
    b = evaluate(str(art), str(small_world))["retrieval"]["baseline"]
    assert 0 <= b["single"]["R@1"] <= b["single"]["R@10"] <= 100 and b["training"]["steps"] == 3
    # recomputed: the saved baseline's own towers on the test split, recall counted here
    import torch
    import torch.nn.functional as F

    from clipq.models.io import load_tokenizer
    from clipq.runtime.templates import SINGLE_TEMPLATE, embed_texts
    from clipq.train.baseline import _Encoder, load_baseline
    from clipq.train.data import load_split

    m = Manifest.load(art)
    model = load_baseline(m)
    split = load_split(str(small_world), "test", m.preprocessing["size"])
    keep = [i for i, c in enumerate(split.captions) if c]
    with torch.no_grad():
        img = F.normalize(model.encode_image(split.pixels[keep]), dim=-1).numpy()
    q = embed_texts(_Encoder(model, load_tokenizer(m, "clip")), [split.captions[i][0] for i in keep], (SINGLE_TEMPLATE,))
    want = _recall_counted(q, img)
    assert b["queries"] == len(keep)
    for k, v in want.items():
        assert b["single"][k] == pytest.approx(v, abs=1e-9), (k, b["single"], want)


def test_baseline_alone_takes_clips_recorded_budget(trained_artifacts, tmp_path):
    """`clipq train baseline` on artifacts trained earlier gets CLIP's recorded seconds and schedule."""
    import shutil

    from clipq.train.pipeline import _recorded_clip_run

    art = tmp_path / "a"
    shutil.copytree(trained_artifacts[0], art)
    rec = _recorded_clip_run(str(art))
    assert rec is not None and rec["seconds"] > 0 and rec["config"]["batch_size"] == rec["batch_size"]
    assert _recorded_clip_run(str(tmp_path / "nothing")) is None


def test_templates_named_sets_and_punctuation():
    from clipq.runtime.templates import TEMPLATE_SETS, embed_texts, strip_punctuation

    assert strip_punctuation("on the left, two red circles; a star.") == "on the left two red circles a star"

    class Enc:
        dim, model_id = 4, "x"

        def encode_texts(self, texts, batch_size=64):
            self.seen = list(texts)
            return np.ones((len(texts), 4), np.float32)

    e = Enc()
    embed_texts(e, ["two circles, left."], "this is")
    assert e.seen == ["this is two circles, left"]
    embed_texts(e, ["two circles, left."], TEMPLATE_SETS["none"], punctuation=False)
    assert e.seen == ["two circles left"]


def test_cosine_schedule_follows_a_length_set_later():
    import torch

    from clipq.train.common import cosine_with_warmup

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    total = {"n": 100}
    sched = cosine_with_warmup(opt, lambda: total["n"], warmup=2)
    lrs = []
    for step in range(30):
        if step == 5:
            total["n"] = 30  # shortened mid-run, as a time budget does after calibration
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.05, abs=1e-6)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))  # decays monotonically after the warm-up


def test_clip_time_budget_shortens_the_run_and_keeps_the_schedule_relative(small_world, tmp_path):
    from clipq.train.clip import ClipTrainConfig, train_clip

    base = dict(steps=400, batch_size=16, warmup=2, calibrate_steps=3, hard_start=0.5, batch_mode="word_groups",
                cluster_size=4)
    short = train_clip(str(small_world), str(tmp_path / "a"), preset="test", progress=False,
                       cfg=ClipTrainConfig(**base, max_seconds=0.01))
    # 0.01 s fits no step: the run ends one step after its 3 calibration steps
    assert short["steps"] == 4 and short["steps_planned"] == 400 and short["max_seconds"] == 0.01
    assert short["hard_from_step"] == int(0.5 * short["steps"])
    assert short["loss_curve"][-1]["step"] == short["steps"]
    roomy = train_clip(str(small_world), str(tmp_path / "b"), preset="test", progress=False,
                       cfg=ClipTrainConfig(**{**base, "steps": 8}, max_seconds=3600.0))
    assert roomy["steps"] == 8 and roomy["hard_from_step"] == 4  # a budget never lengthens a run
