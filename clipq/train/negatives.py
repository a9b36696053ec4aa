"""Hard negatives for contrastive training: caption clusters for batches, and word-swapped captions.

Two ways to make the in-batch negatives differ from the positive only in what a random batch seldom
tests (count, place, and which attribute belongs to which object):

* **caption-cluster batches**: captions are clustered on their words (TF-IDF bag of words, cosine
  k-means); a batch is drawn from a few clusters, so its captions share kind and colour words and
  differ in the rest. Needs no model and works on any caption set.
* **word-class groups**: images whose captions name the same words of every class but one (say the
  same count, colour and place, any shape); a batch drawn from such groups has negatives that differ
  from the positive only in that one class, so the loss must read it.
* **swapped captions** (NegCLIP-style text negatives): a caption with one count, colour, place or
  shape word replaced by another of the same class ("two red circles on the left" -> "three red
  circles on the left"); the image must score its own caption above that one. The word classes
  are plain English (numbers, colour names, spatial words, shape nouns), not tied to the
  synthetic world, so real captions get negatives where they use such words.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

#: word classes for swaps; a word is replaced by another word of its class (same number form)
WORD_CLASSES: dict[str, tuple[str, ...]] = {
    "count": ("one", "two", "three", "four", "five", "six"),
    "digit": ("1", "2", "3", "4", "5", "6"),
    "color": ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "pink", "brown", "gray"),
    "place": ("left", "right", "top", "bottom", "center", "middle"),
    "shape": ("circle", "square", "triangle", "star", "cross", "heart", "diamond", "ring"),
    "shapes": ("circles", "squares", "triangles", "stars", "crosses", "hearts", "diamonds", "rings"),
}
_CLASS_OF = {w: c for c, words in WORD_CLASSES.items() for w in words}
_SAME_MEANING = {frozenset(("center", "middle"))}
_TOKEN = re.compile(r"[a-z0-9]+|[^a-z0-9]+")


def swap_word(text: str, rng: np.random.Generator) -> str | None:
    """``text`` with one swappable word replaced by another of its class, or None if it has none."""
    parts = _TOKEN.findall(text.lower())
    slots = [i for i, p in enumerate(parts) if p in _CLASS_OF]
    if not slots:
        return None
    i = slots[int(rng.integers(len(slots)))]
    old = parts[i]
    options = [w for w in WORD_CLASSES[_CLASS_OF[old]] if w != old and frozenset((w, old)) not in _SAME_MEANING]
    parts[i] = options[int(rng.integers(len(options)))]
    return "".join(parts)


def swapped_captions(texts: list[str], rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """One swapped negative per caption that has a swappable word; returns (negatives, row of its positive)."""
    neg, rows = [], []
    for i, t in enumerate(texts):
        s = swap_word(t, rng)
        if s is not None:
            neg.append(s)
            rows.append(i)
    return neg, np.asarray(rows, dtype=np.int64)


def kmeans(x: torch.Tensor, k: int, iters: int = 10, seed: int = 0) -> torch.Tensor:
    """Cluster assignment of the rows of ``x`` (unit vectors, cosine k-means). Returns labels [N]."""
    g = torch.Generator().manual_seed(seed)
    centers = x[torch.randperm(x.shape[0], generator=g)[:k]].clone()
    labels = torch.zeros(x.shape[0], dtype=torch.long)
    for _ in range(iters):
        labels = (x @ centers.T).argmax(1)
        for j in range(k):
            sel = x[labels == j]
            if len(sel):
                centers[j] = F.normalize(sel.mean(0), dim=0)
    return labels


#: the classes ``word_class_groups`` can vary, each with the word classes it merges
VARY_CLASSES: dict[str, tuple[str, ...]] = {"count": ("count", "digit"), "color": ("color",), "place": ("place",),
                                            "shape": ("shape", "shapes")}
#: one spelling per meaning, so "2"/"two", "middle"/"center" and "circles"/"circle" key alike
_CANONICAL = {**{d: c for d, c in zip(WORD_CLASSES["digit"], WORD_CLASSES["count"])}, "middle": "center",
              **{p: s for p, s in zip(WORD_CLASSES["shapes"], WORD_CLASSES["shape"])}}


def word_class_groups(captions: list[list[str]], vary: str = "shape", min_size: int = 4) -> list[np.ndarray]:
    """Groups of images whose captions agree on every class word except those of class ``vary``.

    Args:
        captions: per image, its captions (the class words of all its phrasings form its key).
        vary: the class the members may differ in: "count", "color", "place" or "shape".
        min_size: groups with fewer members are dropped.
    Returns:
        index arrays of the groups; images whose captions have no class word outside ``vary`` form
        no group.
    Raises:
        ValueError: ``vary`` is not one of ``VARY_CLASSES``.
    """
    if vary not in VARY_CLASSES:
        raise ValueError(f"unknown word class {vary!r} to vary; choose from {', '.join(VARY_CLASSES)}")
    ignored = VARY_CLASSES[vary]
    groups: dict[frozenset[str], list[int]] = {}
    for i, caps in enumerate(captions):
        words = (p for p in _TOKEN.findall(" ".join(caps).lower()) if p in _CLASS_OF and _CLASS_OF[p] not in ignored)
        key = frozenset(_CANONICAL.get(w, w) for w in words)
        if key:
            groups.setdefault(key, []).append(i)
    return [np.asarray(g, dtype=np.int64) for g in groups.values() if len(g) >= min_size]


def caption_clusters(captions: list[list[str]], size: int, seed: int = 0, iters: int = 12) -> list[np.ndarray]:
    """Groups of about ``size`` images whose captions share words (TF-IDF bag of words, cosine k-means).

    Args:
        captions: per image, its captions (all phrasings are pooled into one bag).
        size: wanted images per cluster.
    Returns:
        index arrays of the clusters with at least 4 members.
    """
    n = len(captions)
    docs = [Counter(_TOKEN.findall(" ".join(c).lower())) for c in captions]
    vocab = {w: j for j, w in enumerate(sorted({w for d in docs for w in d if w.strip() and w.isalnum()}))}
    if not vocab or n < 8:
        return [np.arange(n)]
    x = torch.zeros(n, len(vocab))
    for i, d in enumerate(docs):
        for w, c in d.items():
            j = vocab.get(w)
            if j is not None:
                x[i, j] = float(c)
    df = (x > 0).float().sum(0)
    x = F.normalize(torch.log1p(x) * torch.log((1 + n) / (1 + df)), dim=-1)
    labels = kmeans(x, max(2, n // max(size, 1)), iters=iters, seed=seed).numpy()
    return [np.flatnonzero(labels == j) for j in np.unique(labels) if (labels == j).sum() >= 4]
