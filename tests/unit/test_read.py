"""The reading model in the runtime (``ReadingModel.read``) and ``clipq read``, on the shared tiny artifacts.

The answers are checked against training's own scorer (``clipq.train.reading.candidate_scores`` on
the ``clip_reading`` checkpoint) on the world's word images, in process on onnxruntime and on
OpenVINO; then every error a caller can meet, and the command.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from _require import require_module

from clipq.runtime.backends.ort import OrtBackend
from clipq.runtime.errors import (
    ArtifactError,
    InvalidImageError,
    InvalidInputError,
    InvalidTextError,
    ShapeError,
)
from clipq.runtime.manifest import Manifest
from clipq.runtime.tasks import ReadingModel, ReadResult

#: scores agree with PyTorch's to this (measured: ~2e-7); CLIP's own towers, which the reading model was
#: fine-tuned from for only the fixture's 2 steps, differ from its scores by ~1e-3
ATOL = 1e-5


@pytest.fixture(scope="module")
def manifest(tiny_artifacts) -> Manifest:
    return Manifest.load(tiny_artifacts)


@pytest.fixture(scope="module")
def words(small_world):
    """Test word images of the world: (path, question, answer)."""
    from clipq.readers import World

    recs = World(small_world).split("test").words[:16]
    assert recs, "the small world has no word images"
    return [(r.image_path, r.question, r.answers[0]) for r in recs]


@pytest.fixture(scope="module")
def ort(manifest):
    b = OrtBackend(manifest, variant="fp32", threads=1)
    yield b
    b.close()


def _torch_scores(manifest, paths, questions, candidates, checkpoint: str) -> np.ndarray:
    """Training's scorer on a CLIP checkpoint, fed the runtime's pixels (only the engine differs)."""
    torch = require_module("torch")
    from clipq.models.io import load_clip, load_tokenizer
    from clipq.runtime.preprocess import ImagePreprocessor
    from clipq.train.reading import candidate_scores

    clip = load_clip(manifest, checkpoint).eval()
    pixels = torch.from_numpy(ImagePreprocessor.from_manifest(manifest)(paths))
    return candidate_scores(clip, load_tokenizer(manifest, "clip"), pixels, list(questions), list(candidates))


def _check_against_torch(reader: ReadingModel, manifest, words) -> None:
    paths, questions, _ = zip(*words)
    cands = reader.candidates
    want = _torch_scores(manifest, paths, questions, cands, manifest.extra["reading"]["checkpoint"])
    got = reader.scores(list(paths), list(questions))
    assert got.shape == want.shape == (len(words), len(cands)) and got.dtype == np.float32
    assert np.abs(got - want).max() <= ATOL
    # the comparison tells the reading model from the CLIP it was fine-tuned from
    assert np.abs(got - _torch_scores(manifest, paths, questions, cands, "clip")).max() > 10 * ATOL
    results = reader.read(list(paths), list(questions), top_k=5)
    assert all(isinstance(r, ReadResult) and len(r.top) == 5 for r in results)
    # the answer is training's argmax wherever the best two candidates are not within the engines' noise
    top2 = np.sort(want, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 10 * ATOL
    assert clear.sum() >= len(words) // 2, "too few clear-cut rows to compare answers"
    assert [r.answer for r, c in zip(results, clear) if c] == [cands[j] for j in want.argmax(1)[clear]]
    for r, row in zip(results, got):
        assert r.score == pytest.approx(float(row.max()), abs=1e-6) and r.top[0] == (r.answer, r.score)
        assert [s for _, s in r.top] == sorted((s for _, s in r.top), reverse=True)


def test_the_export_recorded_the_reading_model(manifest):
    info = manifest.extra["reading"]
    assert info["candidates"] and info["text"] == "{question} {answer}"
    assert manifest.model("reading_image").inputs == manifest.model("clip_image").inputs
    assert manifest.model("reading_text").meta["tokenizer"] == "clip"
    reader = ReadingModel(OrtBackend(manifest, threads=1))
    assert reader.candidates == info["candidates"] and reader.template == info["text"]
    assert reader.dim == manifest.dims["clip_embed"]


def test_read_matches_trainings_scores_on_onnxruntime(ort, manifest, words):
    _check_against_torch(ReadingModel(ort), manifest, words)


def test_read_matches_trainings_scores_on_openvino(manifest, words):
    require_module("openvino")
    from clipq.runtime.backends.openvino import OpenVinoBackend

    with OpenVinoBackend(manifest, variant="fp32", precision="f32", threads=1) as b:
        _check_against_torch(ReadingModel(b), manifest, words)


def test_read_pairs_images_and_questions_and_takes_its_own_candidates(ort, words):
    reader = ReadingModel(ort)
    (p0, q0, a0), (p1, q1, _) = words[:2]
    cands = [a0, "zebra", a0, "quartz"]  # the repeated one counts once
    one = reader.read(p0, [q0, q1], cands, top_k=9)  # one image, two questions
    assert len(one) == 2 and all(len(r.top) == 3 and {t for t, _ in r.top} == {a0, "zebra", "quartz"} for r in one)
    both = reader.read([p0, p1], q0, cands)  # two images, one question
    pairs = reader.read([p0, p1], [q0, q0], cands)
    assert [r.to_dict() for r in both] == [r.to_dict() for r in pairs]
    assert reader.read([], [], cands) == []
    # the scores are those of the manifest's list, column for column
    full = reader.scores(p0, q0)
    sub = reader.scores(p0, q0, ["zebra", a0])
    assert sub[0, 1] == pytest.approx(full[0, reader.candidates.index(a0)], abs=1e-6)
    json.dumps([r.to_dict() for r in one])


def test_read_errors_are_typed_and_name_the_item(ort, manifest, words):
    reader = ReadingModel(ort)
    p, q, a = words[0]
    with pytest.raises(InvalidInputError, match="candidate list is empty"):
        reader.read(p, q, [])
    with pytest.raises(InvalidTextError, match="candidate 1: text is empty"):
        reader.read(p, q, ["fine", "  "])
    with pytest.raises(InvalidTextError, match="empty") as e:
        reader.read([p, p], [q, ""])
    assert e.value.index == 1
    long = "what does the sign say " * 30
    with pytest.raises(InvalidTextError, match="longer than the reading model's context") as e:
        reader.read([p, p], [q, long])
    assert e.value.index == 1
    with pytest.raises(InvalidImageError) as e:
        reader.read([p, b"not an image", p], q)
    assert e.value.index == 1
    with pytest.raises(ShapeError, match="3 images and 2 questions"):
        reader.read([p, p, p], [q, q])
    # artifacts without a candidate list: candidates must be given
    bare = Manifest.load(manifest.root)
    bare.extra.pop("reading")
    with OrtBackend(bare, variant="fp32", threads=1) as b:
        with pytest.raises(InvalidInputError, match="no candidate answers"):
            ReadingModel(b).read(p, q)
        assert ReadingModel(b).read(p, q, [a, "zebra"])[0].answer in (a, "zebra")
    # artifacts without the reading graphs
    for name in ("reading_image", "reading_text"):
        bare.models.pop(name)
    with OrtBackend(bare, threads=1) as b:
        with pytest.raises(ArtifactError, match="no reading model"):
            ReadingModel(b)


def test_read_command(tiny_artifacts, words, capsys):
    from clipq.app.cli import main

    (p0, q0, _), (p1, _, _) = words[:2]
    root = str(tiny_artifacts)
    assert main(["read", p0, p1, "--question", q0, "--artifacts", root, "--json", "-k", "2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    with OrtBackend(Manifest.load(root), threads=1) as b:
        want = ReadingModel(b).read([p0, p1], q0, top_k=2)
    assert [(r["image"], r["question"]) for r in rows] == [(p0, q0), (p1, q0)]
    assert [r["answer"] for r in rows] == [w.answer for w in want] and all(len(r["top"]) == 2 for r in rows)
    np.testing.assert_allclose([r["score"] for r in rows], [w.score for w in want], atol=1e-6)
    assert main(["read", p0, "-q", q0, "--candidates", "cat, dog,bird", "--top-k", "3", "--artifacts", root]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{p0}\nQ: {q0}\nA: ") and "others: " in out
    assert out.split("\nA: ")[1].split(" ")[0] in ("cat", "dog", "bird")
    # typed errors become one line and exit status 2
    assert main(["read", p0, "-q", q0, "--candidates", ",", "--artifacts", root]) == 2
    assert "candidate list is empty" in capsys.readouterr().err
    assert main(["read", p0, p0, p0, "-q", q0, "-q", q0, "--artifacts", root]) == 2
    assert "cannot be paired" in capsys.readouterr().err
