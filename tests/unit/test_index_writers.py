"""Index writes across processes: concurrent `clipq index add`s serialise and no reported add is lost.

Real processes (the CLI, as a user runs it) on a real index with the shared tiny artifacts' encoder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipq.runtime.errors import ConcurrentWriteError
from clipq.runtime.index import ImageIndex


def _images(folder: Path, n: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = folder / f"{folder.name}_{i}.png"
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "clipq.app.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_concurrent_index_adds_lose_nothing(tiny_artifacts, tmp_path):
    art = str(tiny_artifacts)
    seed_dir = _images(tmp_path / "seed", 3, seed=0)[0].parent
    idx = str(tmp_path / "idx")
    p = _cli("index", "build", str(seed_dir), "-o", idx, "--artifacts", art, "--no-progress", "--json")
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, err[-2000:]
    folders = [_images(tmp_path / f"w{j}", 12, seed=j + 1)[0].parent for j in range(4)]
    procs = [_cli("index", "add", idx, str(f), "--artifacts", art, "--no-progress", "--json") for f in folders]
    reports = []
    for pr in procs:
        out, err = pr.communicate(timeout=300)
        assert pr.returncode == 0, err[-2000:]
        reports.append(json.loads(out))
    assert all(r["added"] == 12 for r in reports)  # every add reported success ...
    index = ImageIndex.load(idx)
    assert len(index) == 3 + 4 * 12  # ... and every one of them is in the saved index
    assert json.loads((Path(idx) / "index.json").read_text())["generation"] == 1 + 4


def test_a_stale_writer_fails_instead_of_overwriting(tmp_path):
    vecs = np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32)
    a = ImageIndex.from_embeddings(vecs, [f"i{n}" for n in range(10)])
    a.save(tmp_path / "idx")
    first, second = ImageIndex.load(tmp_path / "idx"), ImageIndex.load(tmp_path / "idx")
    first.add(vecs[:1] + 1, ["new-a"])
    first.save(tmp_path / "idx")
    second.add(vecs[:1] - 1, ["new-b"])
    with pytest.raises(ConcurrentWriteError, match="another writer"):
        second.save(tmp_path / "idx")
    assert "new-a" in ImageIndex.load(tmp_path / "idx")  # the first writer's change survived
    with ImageIndex.edit(tmp_path / "idx") as index:  # the way to do it: load-modify-save under the lock
        index.add(vecs[:1] - 1, ["new-b"])
    assert {"new-a", "new-b"} <= set(ImageIndex.load(tmp_path / "idx").ids())


def test_a_writer_waits_for_another_process_then_gives_up_clearly(tmp_path):
    vecs = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    ImageIndex.from_embeddings(vecs, ["a", "b", "c", "d"]).save(tmp_path / "idx")
    holder = tmp_path / "hold.py"
    holder.write_text(textwrap.dedent(f"""
        import sys, time
        from clipq.runtime.index import ImageIndex
        with ImageIndex.edit({str(tmp_path / 'idx')!r}) as index:
            print("locked", flush=True)
            time.sleep(4)
    """))
    p = subprocess.Popen([sys.executable, str(holder)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    t0 = time.monotonic()
    with pytest.raises(ConcurrentWriteError, match="another process"):
        with ImageIndex.edit(tmp_path / "idx", timeout=0.5):
            pass
    assert time.monotonic() - t0 < 3
    p.wait(timeout=30)
    with ImageIndex.edit(tmp_path / "idx", timeout=30) as index:  # free again
        assert len(index) == 4
