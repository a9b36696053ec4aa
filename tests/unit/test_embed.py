"""`clipq embed`: sharded, resumable batch embedding, in process and on a local Ray; index from shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _require import require_module
from PIL import Image

from clipq.app.batch_embed import SHARD_DIR, embed_collection, read_embeddings
from clipq.app.cli import main
from clipq.runtime.errors import ArtifactError

N_IMAGES = 300


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """A few hundred real PNG files in two sub-folders, plus two unreadable files."""
    root = tmp_path_factory.mktemp("collection")
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20 + i % 13, 24, 3), dtype=np.uint8)).save(sub / f"img{i:04d}.png")
    (root / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "b" / "empty.jpg").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def reference(collection, tiny_artifacts) -> dict[str, np.ndarray]:
    """Each image's embedding from ClipEncoder directly (what every mode must reproduce)."""
    import clipq.runtime as rt

    paths = sorted(p for p in collection.rglob("img*.png"))
    # fp32: dynamic int8 scales by batch, and the modes batch differently (int8 agrees to ~5e-3 only)
    b = rt.connect(tiny_artifacts, threads=2, variant="fp32")
    try:
        emb = rt.ClipEncoder(b).encode_images(paths)
    finally:
        b.close()
    return {p.relative_to(collection).with_suffix("").as_posix(): e for p, e in zip(paths, emb)}


def _check(out: Path, reference: dict[str, np.ndarray]) -> dict:
    vecs, ids, metas, summary = read_embeddings(out)
    assert sorted(ids) == sorted(reference) and len(ids) == N_IMAGES
    got = dict(zip(ids, vecs))
    diff = max(float(np.abs(got[i] - reference[i]).max()) for i in ids)
    assert diff < 1e-5, diff
    assert all(Path(m["path"]).is_file() for m in metas)
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert sorted(s["image"] for s in skipped) == ["a/broken", "b/empty"]
    assert all(s["reason"] for s in skipped)
    assert summary["embedded"] == N_IMAGES and summary["skipped"] == 2
    return summary


def test_in_process_shards_skip_bad_images_and_match_the_encoder(collection, tiny_artifacts, reference, tmp_path):
    s = embed_collection([collection], tmp_path / "out", artifacts=str(tiny_artifacts), variant="fp32", shard_size=64,
                         batch_size=16, threads=2, progress=False)
    assert s.shards == 5 and s.shards_done_before == 0 and s.mode == "in-process"
    _check(tmp_path / "out", reference)
    again = embed_collection([collection], tmp_path / "out", artifacts=str(tiny_artifacts), variant="fp32", shard_size=64,
                             progress=False)
    assert again.shards_done_before == 5 and again.encoded_now == 0  # nothing redone
    _check(tmp_path / "out", reference)


def test_a_changed_shard_is_redone(collection, tiny_artifacts, reference, tmp_path):
    out = tmp_path / "out"
    embed_collection([collection], out, artifacts=str(tiny_artifacts), variant="fp32", shard_size=100, progress=False)
    npy = out / SHARD_DIR / "shard-00001.npy"
    npy.write_bytes(npy.read_bytes()[:-8])  # truncated
    with pytest.raises(ArtifactError, match="changed"):
        read_embeddings(out)
    s = embed_collection([collection], out, artifacts=str(tiny_artifacts), variant="fp32", shard_size=100, progress=False)
    assert s.shards_done_before == s.shards - 1
    _check(out, reference)


def test_resume_after_an_interrupted_job(collection, tiny_artifacts, reference, tmp_path):
    """Kill a real `clipq embed` process after its first committed shards; the re-run finishes the rest."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "clipq.app.cli", "embed", str(collection), "--out", str(out), "--artifacts",
           str(tiny_artifacts), "--shard-size", "16", "--batch-size", "4", "--threads", "1", "--no-progress", "--variant", "fp32"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((out / SHARD_DIR).glob("*.json"))) < 2 and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    committed = len(list((out / SHARD_DIR).glob("*.json")))
    total = -(-(N_IMAGES + 2) // 16)
    assert 2 <= committed < total, (committed, p.stderr.read()[-2000:] if p.stderr else "")
    assert not (out / "embed.json").exists()  # the job did not finish
    s = embed_collection([collection], out, artifacts=str(tiny_artifacts), variant="fp32", shard_size=16, progress=False)
    assert s.shards_done_before >= committed - 1 and s.shards == total  # (the last may have been mid-commit)
    _check(out, reference)


def test_local_ray_two_workers_give_the_same_shards(collection, tiny_artifacts, reference, tmp_path):
    require_module("ray")
    s = embed_collection([collection], tmp_path / "out", artifacts=str(tiny_artifacts), variant="fp32", ray=True, workers=2,
                         shard_size=64, threads=1, progress=False)
    assert s.mode == "ray" and s.shards == 5
    summary = _check(tmp_path / "out", reference)
    assert json.loads((tmp_path / "out" / "embed.json").read_text())["workers"] == 2
    assert summary["mode"] == "ray"


def test_index_from_embeddings_equals_index_from_images(collection, tiny_artifacts, tmp_path, capsys):
    art = str(tiny_artifacts)
    assert main(["embed", str(collection), "--out", str(tmp_path / "emb"), "--artifacts", art, "--shard-size", "50",
                 "--no-progress", "--json", "--variant", "fp32"]) == 0
    assert json.loads(capsys.readouterr().out)["embedded"] == N_IMAGES
    assert main(["index", "build", "--from-embeddings", str(tmp_path / "emb"), "-o", str(tmp_path / "i1"),
                 "--json"]) == 0
    capsys.readouterr()
    assert main(["index", "build", str(collection), "-o", str(tmp_path / "i2"), "--artifacts", art,
                 "--skip-invalid", "--no-progress", "--json"]) == 0
    capsys.readouterr()
    from clipq.runtime.index import ImageIndex

    a, b = ImageIndex.load(tmp_path / "i1"), ImageIndex.load(tmp_path / "i2")
    assert sorted(a.ids()) == sorted(b.ids()) and a.model_id == b.model_id
    # the index holds the shards' vectors as written (no second encoding) ...
    vecs, ids, _, _ = read_embeddings(tmp_path / "emb")
    np.testing.assert_allclose(a.get_vectors(ids), vecs, atol=1e-6)
    # ... and they are the images' embeddings: the image-built index (the manifest's int8 default,
    # other batches) agrees to int8 precision
    cos = (a.get_vectors(ids) * b.get_vectors(ids)).sum(1)
    assert cos.min() > 0.99, cos.min()
    # both paths give the same ids and metadata paths
    assert a.metadata("a/img0001")["path"] == b.metadata("a/img0001")["path"]
    assert main(["index", "build", "--from-embeddings", str(tmp_path / "nope"), "-o", str(tmp_path / "i3")]) == 2


class _FlakyRay:
    """Stands in for the ``ray`` module's start-up: fails ``fails`` times as Ray does under load."""

    def __init__(self, fails: int) -> None:
        self.fails, self.inits, self.shutdowns = fails, [], 0

    def init(self, **kw):
        self.inits.append(kw)
        if len(self.inits) <= self.fails:
            raise Exception("The current node timed out during startup.")  # noqa: TRY002 - Ray's own

    def shutdown(self):
        self.shutdowns += 1


def test_a_local_ray_that_misses_its_start_up_once_is_started_again():
    from clipq.app.batch_embed import _start_ray
    from clipq.runtime.errors import BackendUnavailable

    flaky = _FlakyRay(1)
    _start_ray(flaky, True)
    assert len(flaky.inits) == 2 and flaky.shutdowns == 1 and flaky.inits[0]["num_cpus"] >= 1
    with pytest.raises(BackendUnavailable, match="a local Ray did not start .*timed out.*tried 2"):
        _start_ray(_FlakyRay(5), True)
    cluster = _FlakyRay(5)
    with pytest.raises(BackendUnavailable, match="Ray cluster at ray://head:10001 did not start"):
        _start_ray(cluster, "ray://head:10001")
    assert len(cluster.inits) == 1 and cluster.inits[0]["address"] == "ray://head:10001"  # no retry of a cluster
