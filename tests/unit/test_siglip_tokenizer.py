"""The tokenizer converted at import gives transformers' own ids on 1,000 varied strings.

SigLIP: ``SiglipTokenizer`` (SentencePiece, with its lower-casing, punctuation removal and whitespace
canonicalisation) against the ``tokenizer.json`` :func:`clipq.models.siglip.siglip_tokenizer_json`
writes, read by the torch-free runtime's ``TextTokenizer`` with the manifest's padding (every text to 64
tokens). SigLIP 2: the checkpoint's ``GemmaTokenizerFast`` against the file the import saves.

Strings: unicode (accents, CJK, Cyrillic, Greek, full-width, ligatures, emoji, combining marks), every
ASCII punctuation character in runs, unusual whitespace (tab, newline, no-break space, ideographic space,
U+2028, the \\x1c-\\x1f separators Python counts as whitespace), upper case, SentencePiece's own "▁",
SigLIP's control tokens written as text between words, and texts longer than the context (truncated).
One known difference is left out: a control token written as text and followed directly by
punctuation (``"</s>,"``) may tokenise differently after it (docs/export.md, SigLIP).
"""

from __future__ import annotations

import random
import string

import pytest
from _require import require_module

require_module("transformers")
require_module("sentencepiece")

import _siglip  # noqa: E402

from clipq.models.siglip import checkpoint_tokenizer  # noqa: E402
from clipq.runtime.errors import InvalidTextError  # noqa: E402
from clipq.runtime.text import TextTokenizer  # noqa: E402

EXTRA = [
    "Café",
    "ÜBER",
    "naïve",
    "東京タワー",
    "ＡＢＣ",
    "①②",
    "ﬁne",
    "İstanbul",
    "ΣΟΦΟΣ",
    "e\u0301",
    "\u00a0",
    "\u3000",
    "\t",
    "\n",
    "\u2028",
    "\x1c",
    "😀",
    "▁",
    "a▁b",
    "“quoted”",
    "¿qué?",
    "½",
    "Привет",
    "straße",
    "x\u200by",
]


def varied_strings(n: int, seed: int = 0, specials: tuple[str, ...] = ()) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        parts = []
        for _ in range(rng.randint(1, 40 if i % 10 == 0 else 12)):
            r = rng.random()
            if r < 0.5:
                parts.append(rng.choice(_siglip.WORDS))
            elif r < 0.7:
                parts.append(rng.choice(EXTRA))
            elif r < 0.85:
                parts.append(rng.choice(string.punctuation) * rng.randint(1, 3))
            else:
                parts.append(rng.choice(_siglip.WORDS).upper())
        sep = rng.choice([" ", "  ", "", " \t", ", ", "\n"])
        s = sep.join(parts)
        if specials and rng.random() < 0.1:  # a control token written as text, between words
            words = s.split(" ")
            words.insert(rng.randint(1, len(words)), f"{rng.choice(specials)} {rng.choice(_siglip.WORDS)}")
            s = " ".join(words)
        if rng.random() < 0.2:
            s = rng.choice([" ", "  ", "\t", "!! ", "..."]) + s + rng.choice([" ", "\n", "?"])
        if i % 25 == 0:
            s = " ".join([s] * 20)  # far over 64 tokens
        out.append(s)
    return out


def _contentful(texts: list[str], runtime: TextTokenizer) -> list[str]:
    keep = []
    for t in texts:
        try:
            runtime([t])
        except InvalidTextError:
            continue
        keep.append(t)
    return keep


@pytest.mark.parametrize("kind", ["siglip", "siglip2"])
def test_converted_tokenizer_gives_transformers_ids(tmp_path, kind):
    if kind == "siglip":
        hf = _siglip.siglip_tokenizer(tmp_path / "spm")
        hf.save_pretrained(tmp_path / "ckpt")
    else:
        hf = _siglip.gemma_tokenizer(tmp_path / "spm")
        hf.save_pretrained(tmp_path / "ckpt")
    path, info = checkpoint_tokenizer(tmp_path / "ckpt", tmp_path / "work")
    runtime = TextTokenizer(
        path, 64, pad_id=info["pad_id"], padding="max_length", padding_side=info["padding_side"]
    )
    texts = _contentful(varied_strings(1100, seed=7, specials=(hf.eos_token, hf.unk_token)), runtime)[:1000]
    assert len(texts) == 1000
    want = hf(texts, padding="max_length", truncation=True, max_length=64)["input_ids"]
    enc = runtime(texts)
    got = enc.input_ids.tolist()
    bad = [i for i in range(len(texts)) if got[i] != want[i]]
    assert not bad, [(texts[i][:80], want[i][:16], got[i][:16]) for i in bad[:3]]
    assert enc.input_ids.shape == (1000, 64)
    assert sum(enc.truncated) >= 40  # the long ones were cut at 64 tokens


def test_empty_after_strip_refused(tmp_path):
    hf = _siglip.siglip_tokenizer(tmp_path / "spm")
    hf.save_pretrained(tmp_path / "ckpt")
    path, info = checkpoint_tokenizer(tmp_path / "ckpt", tmp_path / "work")
    runtime = TextTokenizer(path, 64, pad_id=info["pad_id"], padding="max_length")
    for bad in ["", "   ", "\t\n", "?!", " ... ", "\x1c\x1d"]:
        with pytest.raises(InvalidTextError) as e:
            runtime(["a cat", bad])
        assert e.value.index == 1
    assert runtime(["a cat"]).input_ids.shape == (1, 64)
