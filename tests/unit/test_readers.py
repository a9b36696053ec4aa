"""Readers of COCO-QA, caption/prompt csv and TextVQA json, ``load_images`` and ``World``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipq.readers import (
    CaptionRecord,
    PromptRecord,
    QARecord,
    TextVQARecord,
    World,
    load_images,
    read_captions,
    read_cocoqa,
    read_prompts,
    read_textvqa,
)
from clipq.runtime.errors import DataFormatError, InvalidImageError, InvalidInputError
from clipq.world import generate_world


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("readers") / "world"
    generate_world(out, seed=2, size="small", progress=False)
    return out


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _png(path: Path, size: tuple[int, int] = (8, 6), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 120).save(path)
    return path


def _cocoqa(d: Path, questions: str, answers: str, ids: str, types: str) -> Path:
    for name, text in (("questions", questions), ("answers", answers), ("img_ids", ids), ("types", types)):
        _write(d / f"{name}.txt", text)
    return d


GOOD_QA = (
    "what is on the left ?\nhow many cats are there ?\nwhat color is the bus ?\nwhere is the dog ?\n",
    "circle\ntwo\nred\nleft\n",
    "a\nb\nb\n42\n",
    "0\n1\ncolor\n3\n",
)


# -- COCO-QA -------------------------------------------------------------------------------------


def test_read_cocoqa(tmp_path):
    records = read_cocoqa(_cocoqa(tmp_path / "qa", *GOOD_QA))
    assert records[0] == QARecord(image_id="a", question="what is on the left ?", answer="circle", qtype="object")
    assert [r.qtype for r in records] == ["object", "number", "color", "location"]
    assert records[3].image_id == "42"


def test_read_cocoqa_checks_images_and_resolves_coco_ids(tmp_path):
    images = tmp_path / "images"
    for name in ("a.png", "b.jpg", "COCO_train2014_000000000042.jpg"):
        _png(images / name)
    assert len(read_cocoqa(_cocoqa(tmp_path / "qa", *GOOD_QA), image_dir=images)) == 4
    (images / "b.jpg").unlink()
    with pytest.raises(DataFormatError, match="'b' not found") as e:
        read_cocoqa(tmp_path / "qa", image_dir=images)
    assert e.value.path.endswith("img_ids.txt") and e.value.line == 2


def test_read_cocoqa_line_counts_disagree(tmp_path):
    d = _cocoqa(tmp_path / "qa", GOOD_QA[0], "circle\ntwo\nred\n", GOOD_QA[2], GOOD_QA[3])
    with pytest.raises(DataFormatError) as e:
        read_cocoqa(d)
    msg = str(e.value)
    assert "answers.txt has 3 lines" in msg and "questions.txt has 4" in msg


@pytest.mark.parametrize("bad", ["7", "colr", ""])
def test_read_cocoqa_unknown_type(tmp_path, bad):
    d = _cocoqa(tmp_path / "qa", *GOOD_QA[:3], f"0\n1\n{bad}\n3\n")
    with pytest.raises(DataFormatError) as e:
        read_cocoqa(d)
    assert e.value.path.endswith("types.txt") and e.value.line == 3


def test_read_cocoqa_empty_and_missing_files(tmp_path):
    d = _cocoqa(tmp_path / "qa", "", *GOOD_QA[1:])
    with pytest.raises(DataFormatError, match="empty") as e:
        read_cocoqa(d)
    assert e.value.path.endswith("questions.txt")
    (d / "types.txt").unlink()
    _write(d / "questions.txt", GOOD_QA[0])
    with pytest.raises(DataFormatError, match="not found") as e:
        read_cocoqa(d)
    assert e.value.path.endswith("types.txt")


def test_read_cocoqa_crlf_and_trailing_blank_lines(tmp_path):
    d = _cocoqa(tmp_path / "qa", *(t.replace("\n", "\r\n") + "\r\n" for t in GOOD_QA))
    assert [r.answer for r in read_cocoqa(d)] == ["circle", "two", "red", "left"]


# -- csv -----------------------------------------------------------------------------------------


def test_read_captions(tmp_path):
    path = _write(tmp_path / "c.csv", 'image,text\na.png,"a cat, on a mat"\na.png,two dogs\n\n')
    assert read_captions(path) == [CaptionRecord("a.png", "a cat, on a mat"), CaptionRecord("a.png", "two dogs")]
    flickr = _write(tmp_path / "f.csv", "image,caption\nx.jpg,a child\n")
    assert read_captions(flickr) == [CaptionRecord("x.jpg", "a child")]


def test_read_captions_malformed(tmp_path):
    with pytest.raises(DataFormatError, match="missing column 'text'") as e:
        read_captions(_write(tmp_path / "a.csv", "image,words\na,b\n"))
    assert e.value.line == 1 and e.value.path.endswith("a.csv")
    with pytest.raises(DataFormatError, match="empty"):
        read_captions(_write(tmp_path / "b.csv", ""))
    with pytest.raises(DataFormatError, match="no rows"):
        read_captions(_write(tmp_path / "c.csv", "image,text\n"))
    with pytest.raises(DataFormatError, match="fields") as e:
        read_captions(_write(tmp_path / "d.csv", "image,text\na,b\na,b,c\n"))
    assert e.value.line == 3
    with pytest.raises(DataFormatError, match="empty image or text") as e:
        read_captions(_write(tmp_path / "e.csv", "image,text\na,b\na,\n"))
    assert e.value.line == 3


def test_read_captions_missing_image(tmp_path):
    _png(tmp_path / "img" / "a.png")
    path = _write(tmp_path / "c.csv", "image,text\na.png,x\na,y\nb.png,z\n")
    with pytest.raises(DataFormatError, match="'b.png' not found") as e:
        read_captions(path, image_dir=tmp_path / "img")
    assert e.value.line == 4
    with pytest.raises(DataFormatError, match="does not exist"):
        read_captions(path, image_dir=tmp_path / "nowhere")


def test_read_prompts(tmp_path):
    path = _write(tmp_path / "p.csv", "imgId,prompt\n20057f34d,\"a cat, oil painting\"\n227ef0887,a dog\n")
    assert read_prompts(path) == [PromptRecord("20057f34d", "a cat, oil painting"), PromptRecord("227ef0887", "a dog")]


def test_read_prompts_malformed(tmp_path):
    with pytest.raises(DataFormatError, match="missing column 'prompt'"):
        read_prompts(_write(tmp_path / "a.csv", "imgId,text\na,b\n"))
    with pytest.raises(DataFormatError, match="repeats") as e:
        read_prompts(_write(tmp_path / "b.csv", "imgId,prompt\na,b\na,c\n"))
    assert e.value.line == 3
    with pytest.raises(DataFormatError, match="empty"):
        read_prompts(_write(tmp_path / "c.csv", "\n"))
    _png(tmp_path / "img" / "a.png")
    with pytest.raises(DataFormatError, match="'z' not found") as e:
        read_prompts(_write(tmp_path / "d.csv", "imgId,prompt\na,b\nz,c\n"), image_dir=tmp_path / "img")
    assert e.value.line == 3


# -- TextVQA -------------------------------------------------------------------------------------


def _textvqa(path: Path, data: list[dict]) -> Path:
    return _write(path, json.dumps({"dataset_name": "textvqa", "dataset_type": "train", "data": data}, indent=1))


ITEM = {"question_id": 7, "image_id": "w1", "question": "what does the sign say ?", "answers": ["stop"] * 10}


def test_read_textvqa(tmp_path):
    _png(tmp_path / "images" / "w1.png")
    path = _textvqa(tmp_path / "t.json", [{**ITEM, "image_path": "images/w1.png"}])
    (rec,) = read_textvqa(path)
    assert rec == TextVQARecord(7, "w1", "what does the sign say ?", ["stop"] * 10, str(tmp_path / "images" / "w1.png"))
    official = _textvqa(tmp_path / "o.json", [ITEM, {k: v for k, v in ITEM.items() if k != "answers"}])
    recs = read_textvqa(official, image_dir=tmp_path / "images")
    assert recs[0].image_path == str(tmp_path / "images" / "w1.png") and recs[1].answers == []
    assert read_textvqa(official)[0].image_path is None


def test_read_textvqa_malformed(tmp_path):
    bad = _write(tmp_path / "bad.json", '{"data": [\n  {"question_id": 1,\n  }\n]}')
    with pytest.raises(DataFormatError, match="invalid json") as e:
        read_textvqa(bad)
    assert e.value.line == 3 and e.value.path.endswith("bad.json")
    with pytest.raises(DataFormatError, match="empty"):
        read_textvqa(_write(tmp_path / "e.json", "  \n"))
    with pytest.raises(DataFormatError, match="'data' list"):
        read_textvqa(_write(tmp_path / "n.json", '{"rows": []}'))
    with pytest.raises(DataFormatError, match=r"data\[1\] lacks 'question'"):
        read_textvqa(_textvqa(tmp_path / "k.json", [ITEM, {"question_id": 2, "image_id": "x"}]))
    with pytest.raises(DataFormatError, match="list of strings"):
        read_textvqa(_textvqa(tmp_path / "a.json", [{**ITEM, "answers": "stop"}]))
    with pytest.raises(DataFormatError, match="does not exist"):
        read_textvqa(_textvqa(tmp_path / "i.json", [{**ITEM, "image_path": "images/none.png"}]))
    _png(tmp_path / "images" / "other.png")
    with pytest.raises(DataFormatError, match="'w1' not found"):
        read_textvqa(_textvqa(tmp_path / "j.json", [ITEM]), image_dir=tmp_path / "images")
    assert read_textvqa(tmp_path / "j.json", image_dir=tmp_path / "images", check_images=False)[0].image_path is None


# -- images --------------------------------------------------------------------------------------


def test_load_images(tmp_path):
    a = _png(tmp_path / "a.png", (8, 6))
    b = _png(tmp_path / "b.png", (8, 6), mode="RGBA")
    c = _png(tmp_path / "c.jpg", (5, 9), mode="L")
    x = load_images([a, b])
    assert x.shape == (2, 6, 8, 3) and x.dtype == np.uint8
    assert load_images([a, c], size=4).shape == (2, 4, 4, 3)
    assert load_images([str(c)], size=(10, 3)).shape == (1, 3, 10, 3)
    assert load_images([], size=4).shape == (0, 4, 4, 3)


def test_load_images_errors(tmp_path):
    a = _png(tmp_path / "a.png", (8, 6))
    c = _png(tmp_path / "c.png", (5, 9))
    with pytest.raises(InvalidImageError, match="differs") as e:
        load_images([a, c])
    assert e.value.index == 1
    with pytest.raises(InvalidImageError, match="not found"):
        load_images([a, tmp_path / "none.png"])
    broken = _write(tmp_path / "broken.png", "not an image")
    with pytest.raises(InvalidImageError, match="cannot decode") as e:
        load_images([broken])
    assert e.value.index == 0
    with pytest.raises(InvalidInputError):
        load_images([a], size=0)


# -- World ---------------------------------------------------------------------------------------


def test_world_reads_the_synthetic_world(small_world):
    world = World(small_world)
    info = json.loads((small_world / "world.json").read_text())
    assert world.splits == ("train", "val", "test")
    assert world.vocab["answers"] == info["vocab"]["answers"]
    for name in world.splits:
        split = world.split(name)
        n = info["splits"][name]
        assert len(split) == len(split.image_paths) == n["images"] == len(split.prompts)
        assert len(split.captions) == n["captions"] and len(split.questions) == n["questions"]
        assert len(split.words) == n["words"]
        assert all(p.is_file() for p in split.image_paths)
        assert all(w.image_path and Path(w.image_path).is_file() for w in split.words)
        assert split.path_of(split.image_ids[3]) == split.image_paths[3]
        assert {q.qtype for q in split.questions} == {"object", "number", "color", "location"}
    assert world.split("val") is world.split("val")
    images = load_images(world.split("val").image_paths[:4])
    assert images.shape == (4, 64, 64, 3)
    with pytest.raises(InvalidInputError, match="no split 'dev'"):
        world.split("dev")


def test_world_without_world_json(tmp_path):
    root = tmp_path / "real"
    for name in ("COCO_val2014_000000000042.jpg", "COCO_val2014_000000000007.jpg"):
        _png(root / "images" / name)
    _cocoqa(root / "cocoqa" / "test", "what is it ?\nhow many ?\n", "cat\nthree\n", "42\n7\n", "0\n1\n")
    world = World(root)
    assert world.splits == ("test",)
    split = world.split("test")
    assert split.image_ids == ["42", "7"]
    assert split.image_paths[0].name == "COCO_val2014_000000000042.jpg"
    assert split.captions == [] and split.prompts == {} and split.words == []
    assert world.vocab["answers"] == ["cat", "three"]


def test_world_reports_missing_images_and_bad_files(small_world, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(small_world, root)
    (root / "images" / "val" / "val_000003.png").unlink()
    with pytest.raises(DataFormatError, match="val_000003") as e:
        World(root).split("val")
    assert e.value.path.endswith(str(Path("cocoqa") / "val" / "img_ids.txt")) and e.value.line is not None
    assert len(World(root, check_images=False).split("val").questions) > 0
    (root / "world.json").write_text("{oops")
    with pytest.raises(DataFormatError, match="invalid json"):
        World(root)
    with pytest.raises(DataFormatError, match="does not exist"):
        World(tmp_path / "missing")
    labels_only = tmp_path / "labels"
    _write(labels_only / "prompts" / "train.csv", "imgId,prompt\na,b\n")
    with pytest.raises(DataFormatError, match="no image directory"):
        World(labels_only).split("train")
