"""The synthetic world generator: determinism, layout, counts, labels, and ``clipq data synth``."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipq.app.cli import main
from clipq.runtime.errors import InvalidInputError
from clipq.world import (
    COLORS,
    COUNT_WORDS,
    IMAGE_SIZE,
    KINDS,
    PLACES,
    QUESTION_TYPES,
    SIZES,
    generate_world,
    render_scene,
)

SPLITS = ("train", "val", "test")
SAME_BYTES = (
    "world.json",
    "cocoqa/train/questions.txt",
    "cocoqa/val/answers.txt",
    "cocoqa/test/types.txt",
    "captions/train.csv",
    "prompts/test.csv",
    "words/textvqa_val.json",
    "images/train/train_000000.png",
    "images/val/val_000007.png",
    "images/test/test_000049.png",
    "words/images/train/word_train_000003.png",
    "samples.png",
)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("world") / "seed0"
    return out, generate_world(out, seed=0, size="small", progress=False)


@pytest.fixture(scope="session")
def world_again(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world") / "seed0-again"
    generate_world(out, seed=0, size="small", progress=False, workers=2)  # the other run is in-process
    return out


@pytest.fixture(scope="session")
def world_cli(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("world") / "seed1-cli"
    rc = main(["data", "synth", "--out", str(out), "--seed", "1", "--size", "small", "--no-progress"])
    return out, rc


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_same_seed_gives_identical_bytes(world, world_again):
    root, _ = world
    for rel in SAME_BYTES:
        assert (root / rel).read_bytes() == (world_again / rel).read_bytes(), rel


def test_two_worker_processes_write_the_same_world_as_one(world, world_again):
    root, _ = world
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    again = sorted(p.relative_to(world_again) for p in world_again.rglob("*") if p.is_file())
    assert files == again and len(files) > 300
    differ = [str(rel) for rel in files if (root / rel).read_bytes() != (world_again / rel).read_bytes()]
    assert differ == []


def test_workers_must_be_positive(tmp_path):
    with pytest.raises(InvalidInputError, match="workers"):
        generate_world(tmp_path / "w", size="small", progress=False, workers=0)


def test_synthetic_words_are_the_same_in_worker_processes_and_match_render_word():
    import numpy as np

    from clipq.world import render_word, render_words

    one, w1, q1 = render_words(3, 6, ("stop", "open", "exit"), size=32, workers=1)
    two, w2, q2 = render_words(3, 6, ("stop", "open", "exit"), size=32, workers=2)
    assert one.shape == (6, 32, 32, 3) and one.dtype == np.uint8
    assert np.array_equal(one, two) and w1 == w2 and q1 == q2
    word, question, image = render_word(3, 4, ("stop", "open", "exit"))
    assert (w1[4], q1[4]) == (word, question)
    assert np.array_equal(one[4], np.asarray(image.convert("RGB").resize((32, 32))))
    with pytest.raises(InvalidInputError, match="workers"):
        render_words(3, 2, workers=0)


def test_other_seed_gives_other_files(world, world_cli):
    root, _ = world
    other, rc = world_cli
    assert rc == 0
    for rel in ("cocoqa/train/questions.txt", "captions/train.csv", "images/train/train_000000.png",
                "words/images/train/word_train_000000.png"):
        assert (root / rel).read_bytes() != (other / rel).read_bytes(), rel


def test_layout_and_split_counts(world):
    root, summary = world
    spec = SIZES["small"]
    expected = {"train": 180, "val": 20, "test": 50}
    expected_words = {"train": 54, "val": 6, "test": 20}
    assert spec.scenes_train_draw == expected["train"] + expected["val"]
    assert expected["val"] / spec.scenes_train_draw == pytest.approx(0.1)
    info = json.loads((root / "world.json").read_text())
    assert info == summary
    assert info["seed"] == 0 and info["size"] == "small" and info["generator"] == "clipq.world"
    assert info["draw"]["scenes_train_draw"] == 200 and info["draw"]["val_fraction"] == 0.1
    for split in SPLITS:
        pngs = sorted((root / "images" / split).glob("*.png"))
        assert len(pngs) == expected[split] == info["splits"][split]["images"]
        assert pngs[0].name == f"{split}_000000.png"
        words = sorted((root / "words" / "images" / split).glob("*.png"))
        assert len(words) == expected_words[split] == info["splits"][split]["words"]
        for name in ("questions.txt", "answers.txt", "img_ids.txt", "types.txt"):
            assert len(_lines(root / "cocoqa" / split / name)) == info["splits"][split]["questions"]
    assert (root / "samples.png").is_file()
    with Image.open(root / "samples.png") as im:
        assert im.size[0] >= 4 * 128


def test_images_are_64px_rgb(world):
    root, _ = world
    for path in sorted((root / "images" / "val").glob("*.png"))[:5] + sorted(
        (root / "words" / "images" / "val").glob("*.png")
    )[:3]:
        with Image.open(path) as im:
            assert im.mode == "RGB" and im.size == (IMAGE_SIZE, IMAGE_SIZE)


def test_questions_cover_every_type_with_one_word_answers(world):
    root, summary = world
    answers_vocab = set(summary["vocab"]["answers"])
    by_type = {"0": set(KINDS), "1": set(COUNT_WORDS), "2": set(COLORS), "3": set(PLACES)}
    for split in SPLITS:
        d = root / "cocoqa" / split
        questions, answers = _lines(d / "questions.txt"), _lines(d / "answers.txt")
        ids, types = _lines(d / "img_ids.txt"), _lines(d / "types.txt")
        assert Counter(types).keys() == {"0", "1", "2", "3"}
        per_image = Counter(ids)
        assert set(per_image) == {p.stem for p in (root / "images" / split).glob("*.png")}
        assert min(per_image.values()) >= len(QUESTION_TYPES)
        for q, a, t in zip(questions, answers, types):
            assert q == q.lower() and q.endswith(" ?") and "  " not in q
            assert re.fullmatch(r"[a-z]+", a), a
            assert a in by_type[t] and a in answers_vocab, (q, a, t)


def test_captions_and_prompts(world):
    root, _ = world
    numbers = {**{w: i + 1 for i, w in enumerate(COUNT_WORDS)}, **{str(i): i for i in range(1, 5)}, "a": 1, "an": 1}
    for split in SPLITS:
        captions = _csv(root / "captions" / f"{split}.csv")
        assert list(captions[0]) == ["image", "text"]
        by_image: dict[str, list[str]] = {}
        for row in captions:
            by_image.setdefault(row["image"], []).append(row["text"])
        prompts = _csv(root / "prompts" / f"{split}.csv")
        assert list(prompts[0]) == ["imgId", "prompt"]
        assert [p["imgId"] for p in prompts] == sorted(by_image)
        for texts in by_image.values():
            assert len(texts) >= 3 and len(set(texts)) == len(texts)
            for t in texts:
                assert any(c in t.split() for c in COLORS), t
                assert any(k in t for k in KINDS), t
                assert any(w in numbers for w in re.findall(r"[a-z0-9]+", t)), t
        for p in prompts:
            assert "background" in p["prompt"] and p["prompt"].count(",") >= 2
    words_in_captions = Counter(w for row in _csv(root / "captions" / "train.csv") for w in row["text"].split())
    assert words_in_captions["two"] > words_in_captions["2"] > 0


def test_scene_labels_match_geometry():
    band = {"left": (0, 22), "right": (42, 64), "top": (0, 22), "bottom": (42, 64), "center": (18, 46)}
    for i in range(60):
        scene, image = render_scene(7, "test", i)
        assert image.size == (IMAGE_SIZE, IMAGE_SIZE)
        group = [s for s in scene.shapes if s.kind == scene.kind and s.color == scene.color]
        assert len(group) == scene.count and 1 <= scene.count <= 4
        assert len({s.size for s in group}) == 1
        if scene.distractor is not None:
            kind, color, place = scene.distractor
            assert scene.count < 4 and kind != scene.kind and color != scene.color and place != scene.place
            assert len(scene.shapes) == scene.count + 1
        for s in scene.shapes:
            assert 0 <= s.x - s.size / 2 and s.x + s.size / 2 <= IMAGE_SIZE
            assert 0 <= s.y - s.size / 2 and s.y + s.size / 2 <= IMAGE_SIZE
        for a, b in ((a, b) for k, a in enumerate(scene.shapes) for b in scene.shapes[k + 1:]):
            assert max(abs(a.x - b.x), abs(a.y - b.y)) >= (a.size + b.size) / 2, "shapes overlap"
        lo, hi = band[scene.place]
        coord = [s.y for s in group] if scene.place in ("top", "bottom") else [s.x for s in group]
        assert all(lo <= c <= hi for c in coord), (scene.place, coord)


def test_scene_depends_on_seed_and_index():
    a, img_a = render_scene(0, "train", 5)
    b, img_b = render_scene(0, "train", 5)
    assert a == b and np.array_equal(np.asarray(img_a), np.asarray(img_b))
    c, img_c = render_scene(1, "train", 5)
    assert not np.array_equal(np.asarray(img_a), np.asarray(img_c))


def test_textvqa_json(world):
    root, _ = world
    for split in SPLITS:
        doc = json.loads((root / "words" / f"textvqa_{split}.json").read_text())
        assert doc["dataset_name"] == "textvqa" and doc["dataset_type"] == split
        for item in doc["data"]:
            assert set(item) == {"question_id", "image_id", "question", "answers", "image_path"}
            assert len(item["answers"]) == 10 and 3 <= len(item["answers"][0]) <= 6
            assert (root / "words" / item["image_path"]).is_file()
    ids = [i["question_id"] for s in SPLITS for i in json.loads((root / f"words/textvqa_{s}.json").read_text())["data"]]
    assert len(set(ids)) == len(ids)


def test_regenerating_replaces_a_world_but_refuses_foreign_files(tmp_path):
    target = tmp_path / "w"
    (target / "images" / "train").mkdir(parents=True)
    (target / "images" / "train" / "mine.png").write_bytes(b"x")
    with pytest.raises(InvalidInputError, match="not written by"):
        generate_world(target, seed=0, size="small", progress=False)
    assert (target / "images" / "train" / "mine.png").exists()

    (target / "world.json").write_text(json.dumps({"generator": "clipq.world"}))
    (target / "notes.txt").write_text("kept")
    generate_world(target, seed=0, size="small", progress=False)
    assert not (target / "images" / "train" / "mine.png").exists()
    assert (target / "notes.txt").read_text() == "kept"
    assert len(list((target / "images" / "train").glob("*.png"))) == 180


def test_bad_arguments(tmp_path):
    with pytest.raises(InvalidInputError, match="unknown world size"):
        generate_world(tmp_path / "w", size="huge", progress=False)
    with pytest.raises(InvalidInputError, match="seed"):
        generate_world(tmp_path / "w", seed=-1, progress=False)


def test_cli_synth_and_check(world_cli, capsys):
    out, rc = world_cli
    assert rc == 0
    assert json.loads((out / "world.json").read_text())["seed"] == 1
    assert main(["data", "check", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"]["val"]["images"] == 20
    assert set(report["splits"]["train"]["question_types"]) == set(QUESTION_TYPES)


def test_cli_reports_bad_data_with_exit_code_2(tmp_path, capsys):
    (tmp_path / "cocoqa" / "train").mkdir(parents=True)
    (tmp_path / "cocoqa" / "train" / "questions.txt").write_text("what is it ?\n")
    assert main(["data", "check", str(tmp_path)]) == 2
    assert "answers.txt" in capsys.readouterr().err


def test_mismatched_prompts_only_in_train_and_listed(world):
    """A documented share of training prompts describe another scene; val and test stay clean."""
    from clipq.world import PROMPT_MISMATCH, mismatched_prompt

    root, summary = world
    wrong = set(_lines(root / "prompts" / "train_mismatched.txt"))
    assert summary["draw"]["prompt_mismatch_train"] == PROMPT_MISMATCH
    assert summary["splits"]["train"]["prompts_mismatched"] == len(wrong)
    assert summary["splits"]["val"]["prompts_mismatched"] == summary["splits"]["test"]["prompts_mismatched"] == 0
    assert 0.05 < len(wrong) / summary["splits"]["train"]["images"] < 0.3  # 15 % of 180, give or take
    prompts = {p["imgId"]: p["prompt"] for p in _csv(root / "prompts" / "train.csv")}
    for image_id, prompt in prompts.items():
        index = int(image_id.rsplit("_", 1)[1])
        scene, _ = render_scene(0, "train", index, image_id)
        if image_id in wrong:
            assert prompt == mismatched_prompt(0, index) and prompt != scene.prompt
        else:
            assert prompt == scene.prompt and mismatched_prompt(0, index) is None
    # the scenes themselves do not depend on the noise: captions are those of the drawn scene
    caps = [r["text"] for r in _csv(root / "captions" / "train.csv") if r["image"] == "train_000000"]
    assert caps == render_scene(0, "train", 0)[0].captions


def test_render_word_is_deterministic_and_uses_the_given_words():
    from clipq.world import render_word

    w1, q1, im1 = render_word(0, 3)
    w2, q2, im2 = render_word(0, 3)
    assert (w1, q1) == (w2, q2) and np.array_equal(np.asarray(im1), np.asarray(im2))
    assert im1.size == (IMAGE_SIZE, IMAGE_SIZE) and q1.endswith("?")
    assert {render_word(0, i, ("stop", "exit"))[0] for i in range(20)} == {"stop", "exit"}
    assert not np.array_equal(np.asarray(render_word(1, 3)[2]), np.asarray(im1))


def test_demo_search_check_counts_hits_and_what_the_index_allows(tmp_path):
    """The demo's contact-sheet check: top-3 hits by the world's labels, and the ceiling the index sets."""
    from types import SimpleNamespace

    from clipq.app.demo_stages import DemoContext, _check_searches
    from clipq.world import render_scene

    ids = [f"test_{i:06d}" for i in range(1000)]
    labels = {i: render_scene(0, "test", int(i[-6:]))[0] for i in ids}
    query = "two red circles on the left"
    same = [i for i in ids if (labels[i].kind, labels[i].color, labels[i].count) == ("circle", "red", 2)]
    other = [i for i in ids if i not in same]
    assert len(same) >= 2  # seed 0's test split has such scenes (the demo's first query)
    top = [SimpleNamespace(id=x) for x in (same[:2] + other[:1])]
    ctx = DemoContext(out=tmp_path, data=tmp_path, artifacts=tmp_path, seed=0, size="medium", progress=False,
                      timings={}, report={})
    got = _check_searches(ctx, [query], [top], ids)[query]
    assert got["in_index"] == len(same) and got["possible"] == min(3, len(same))
    assert got["top3_right"] == 2
    assert [g["id"] for g in got["top3"]] == [x.id for x in top]
    assert got["top3"][2]["scene"][:3] != ["circle", "red", 2]
    # an index of only the wrong images: nothing right is possible
    none = _check_searches(ctx, [query], [top[2:]], other)[query]
    assert none["in_index"] == 0 and none["possible"] == 0 and none["top3_right"] == 0
