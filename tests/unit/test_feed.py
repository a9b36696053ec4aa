"""The decode pipeline: batches in order from a pool of threads, one ahead, errors named and never fatal to an index build."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from clipq.runtime.errors import InvalidImageError
from clipq.runtime.feed import BatchFeed, decode_threads


class SlowPre:
    """Stands in for ImagePreprocessor: row i is filled with i, later items finish first."""

    size = 2

    def __init__(self, bad: int | None = None) -> None:
        self.bad = bad
        self.started: list[int] = []
        self.lock = threading.Lock()

    def one(self, x: int, index: int | None = None) -> np.ndarray:
        with self.lock:
            self.started.append(index)
        time.sleep(0.002 * (10 - x % 10))
        if x == self.bad:
            raise InvalidImageError("broken", index=index, source=f"item-{x}")
        return np.full((3, 2, 2), x, np.float32)


def test_batches_come_in_input_order_and_the_next_is_decoded_ahead():
    pre = SlowPre()
    items = list(range(23))
    with ThreadPoolExecutor(3) as pool:
        feed = BatchFeed(pre, items, 8, pool)
        got = feed(0, 8)
        assert [r[0, 0, 0] for r in got] == list(range(8))
        time.sleep(0.1)  # while "the engine" runs batch 0, batch 1 decodes
        assert set(range(8, 16)) <= set(pre.started)
        assert not set(range(16, 23)) & set(pre.started)  # never more than one batch ahead
        rest = np.concatenate([feed(8, 16), feed(16, 23)])
        assert [r[0, 0, 0] for r in rest] == list(range(8, 23))
        feed.close()


def test_a_bad_image_raises_with_its_index_in_the_whole_call():
    pre = SlowPre(bad=11)
    with ThreadPoolExecutor(2) as pool:
        feed = BatchFeed(pre, list(range(20)), 4, pool)
        feed(0, 4), feed(4, 8)
        with pytest.raises(InvalidImageError, match="broken") as ei:
            feed(8, 12)
        assert ei.value.index == 11
        # out of order asks (a retry) are served too
        assert feed(0, 2).shape == (2, 3, 2, 2)


def test_decode_threads_follow_the_environment(monkeypatch):
    monkeypatch.setenv("CLIPQ_DECODE_THREADS", "3")
    assert decode_threads() == 3
    monkeypatch.delenv("CLIPQ_DECODE_THREADS")
    assert decode_threads() >= 1


def test_index_build_keeps_order_and_skips_unreadable_files(tiny_artifacts, tmp_path):
    """A folder split into pipelined calls gives the embeddings of one-by-one encoding, bad files reported."""
    from clipq.runtime import ClipEncoder, connect
    from clipq.runtime.index import ImageIndex

    rng = np.random.default_rng(0)
    for i in range(21):
        Image.fromarray(rng.integers(0, 256, (90 + i, 120, 3), dtype=np.uint8)).save(tmp_path / f"img_{i:02d}.jpg")
    (tmp_path / "img_05.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "broken.png").write_bytes(b"")
    backend = connect(tiny_artifacts, threads=1, variant="fp32")
    try:
        enc = ClipEncoder(backend)
        idx = ImageIndex(enc.dim)
        rep = idx.add_images(tmp_path, enc, progress=False, skip_invalid=True, batch_size=64)
        assert [s for s, _ in rep.skipped] == ["broken", "img_05"]  # in folder order
        ids = [f"img_{i:02d}" for i in range(21) if i != 5]
        assert rep.added == ids and idx.ids() == ids
        want = enc.encode_images([str(tmp_path / f"{i}.jpg") for i in ids], batch_size=1)
        np.testing.assert_allclose(idx.get_vectors(ids), want, atol=1e-5)
        with pytest.raises(InvalidImageError) as ei:
            ImageIndex.from_images(tmp_path, enc, progress=False)
        assert ei.value.index == 0 and "broken" in str(ei.value)
    finally:
        backend.close()
