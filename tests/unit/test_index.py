"""ImageIndex: recall against brute force, writes, filters, persistence, bad input, threads.

Real hnswlib throughout; encoders are a tiny deterministic stand-in (the real ones live in
clipq.runtime.tasks and have their own tests).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from clipq.runtime.errors import (
    ArtifactError,
    DimensionMismatchError,
    DuplicateIdError,
    IndexCorruptError,
    InvalidImageError,
    InvalidInputError,
    SchemaVersionError,
    UnknownIdError,
)
from clipq.runtime.index import LOCK_NAME, SIDECAR_NAME, ImageIndex, RWLock, SearchResult, exact_topk
from clipq.runtime.index import persistence as persistence_mod

DIM = 32


def clustered(n: int, dim: int = DIM, seed: int = 0, clusters: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(q: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    """Top-k rows of x by cosine, written independently of the code under test."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    return np.argsort(-(qn @ xn.T), axis=1)[:, :k]


def ids_of(n: int) -> list[str]:
    return [f"v{i}" for i in range(n)]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    allv = clustered(4200)
    return allv[:4000], allv[4000:]


@pytest.fixture(scope="module")
def built(data: tuple[np.ndarray, np.ndarray]) -> ImageIndex:
    x, _ = data
    meta = [{"n": i, "parity": "even" if i % 2 == 0 else "odd", "bucket": i % 10} for i in range(len(x))]
    return ImageIndex.from_embeddings(x, ids_of(len(x)), meta, exact_threshold=0)


class FakeImageEncoder:
    """Embeds an image from its pixels: a fixed random projection of a 4x4 thumbnail."""

    def __init__(self, dim: int = DIM, model_id: str = "fake-clip-1") -> None:
        self.dim, self.model_id = dim, model_id
        self.proj = np.random.default_rng(7).standard_normal((48, dim)).astype(np.float32)

    def encode_images(self, images, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        import io

        from PIL import Image

        rows = []
        for n, item in enumerate(images):
            try:
                with Image.open(io.BytesIO(item) if isinstance(item, bytes) else item) as im:
                    arr = np.asarray(im.convert("RGB").resize((4, 4)), np.float32)
            except (OSError, ValueError) as e:
                raise InvalidImageError(f"cannot decode image: {e}", index=n) from None
            rows.append(arr.reshape(-1) / 255.0 @ self.proj)
        out = np.stack(rows)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def write_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"img_{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


# -- recall ---------------------------------------------------------------------------------------
def test_recall_against_brute_force(built: ImageIndex, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, q = data
    built.ef = 64
    truth = brute_force(q, x, 10)
    got, scores = built.search_ids(q, 10, exact=False)
    recall = np.mean([len({f"v{t}" for t in row} & set(g)) / 10 for row, g in zip(truth, got)])
    assert recall >= 0.95
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_exact_search_matches_brute_force(built: ImageIndex, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, q = data
    got, scores = built.search_ids(q[:20], 5, exact=True)
    truth = brute_force(q[:20], x, 5)
    assert got == [[f"v{t}" for t in row] for row in truth]
    expected = np.sort(-(q[:20] @ x.T), axis=1)[:, :5]
    np.testing.assert_allclose(scores, -expected, atol=1e-5)


def test_recall_check_reports_high_recall(built: ImageIndex) -> None:
    built.ef = 64
    rep = built.recall_check(k=10, n_queries=100, seed=1)
    assert rep.n_queries == 100 and rep.k == 10 and rep.ef == 64
    assert rep.recall >= 0.95
    assert rep.hnsw_qps > 0 and rep.exact_qps > 0


def test_results_are_typed_with_cosine_scores(built: ImageIndex, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = data
    hits = built.search(x[7], k=3, exact=False)
    assert all(isinstance(h, SearchResult) for h in hits)
    assert hits[0].id == "v7" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].metadata["n"] == 7
    with pytest.raises(TypeError):
        hits[0].metadata["n"] = 1  # read-only view: results cannot change the index
    assert hits[0].to_dict()["metadata"] == {"n": 7, "parity": "odd", "bucket": 7}


# -- filters --------------------------------------------------------------------------------------
@pytest.mark.parametrize("exact", [False, True, None])
def test_filter_dict_matches_filtered_brute_force(built: ImageIndex, data, exact) -> None:
    x, q = data
    odd = np.arange(1, len(x), 2)
    truth = odd[brute_force(q[:30], x[odd], 5)]
    got, _ = built.search_ids(q[:30], 5, filter={"parity": "odd"}, exact=exact)
    recall = np.mean([len({f"v{t}" for t in r} & set(g)) / 5 for r, g in zip(truth, got)])
    assert recall >= 0.95
    assert all(int(i[1:]) % 2 == 1 for row in got for i in row)


def test_filter_list_value_and_callable(built: ImageIndex, data) -> None:
    _, q = data
    hits = built.search(q[0], 20, filter={"bucket": [3, 4]})
    assert hits and all(h.metadata["bucket"] in (3, 4) for h in hits)
    hits = built.search(q[0], 20, filter=lambda m: m["n"] < 7)  # strict filter: exact path
    assert sorted(h.metadata["n"] for h in hits) == list(range(7))
    assert built.search(q[0], 5, filter={"parity": "none"}) == []


# -- writes ---------------------------------------------------------------------------------------
def test_add_delete_update() -> None:
    x = clustered(300, seed=3)
    idx = ImageIndex(DIM, exact_threshold=0, rebuild_threshold=0.9)
    assert idx.add(x[:200], ids_of(200), [{"n": i} for i in range(200)]) == ids_of(200)
    assert idx.add(x[200:]) == [f"item-{i}" for i in range(200, 300)]  # default ids from labels
    assert len(idx) == 300 and "v5" in idx
    assert idx.delete(["v5", "v6"]) == 2
    assert "v5" not in idx and len(idx) == 298 and idx.deleted_count == 2
    assert all(h.id not in ("v5", "v6") for h in idx.search(x[5], 10, exact=False))
    # an id can come back after a delete (as a new label)
    idx.add(x[5], ["v5"], [{"n": "again"}])
    assert idx.search(x[5], 1)[0].id == "v5"
    # update moves the vector and replaces the metadata
    idx.update("v7", embedding=x[250], metadata={"moved": True})
    top = {h.id for h in idx.search(x[250], 2, exact=False)}
    assert top == {"v7", "item-250"}
    assert idx.metadata("v7") == {"moved": True}
    idx.update("v8", metadata={"only": "meta"})
    assert idx.search(x[8], 1, exact=False)[0].metadata == {"only": "meta"}


def test_delete_is_all_or_nothing_and_unknown_ids_are_named() -> None:
    idx = ImageIndex.from_embeddings(clustered(50), ids_of(50))
    with pytest.raises(UnknownIdError, match="nope"):
        idx.delete(["v1", "nope"])
    assert "v1" in idx and len(idx) == 50
    with pytest.raises(UnknownIdError):
        idx.update("nope", metadata={})
    with pytest.raises(UnknownIdError):
        idx.metadata("nope")


def test_rebuild_after_many_deletes_keeps_ids_and_recall() -> None:
    x = clustered(1000, seed=4)
    idx = ImageIndex.from_embeddings(x, ids_of(1000), exact_threshold=0, rebuild_threshold=0.3)
    idx.delete(ids_of(250))
    assert idx.deleted_count == 250  # below the threshold: only marked
    idx.delete([f"v{i}" for i in range(250, 400)])
    assert idx.deleted_count == 0 and len(idx) == 600  # 40 % deleted: rebuilt
    live = x[400:]
    q = clustered(50, seed=5)
    truth = brute_force(q, live, 10) + 400
    got, _ = idx.search_ids(q, 10, exact=False)
    recall = np.mean([len({f"v{t}" for t in r} & set(g)) / 10 for r, g in zip(truth, got)])
    assert recall >= 0.95


# -- bad input ------------------------------------------------------------------------------------
def test_wrong_dimension_is_refused() -> None:
    idx = ImageIndex.from_embeddings(clustered(20), ids_of(20))
    with pytest.raises(DimensionMismatchError, match="dimension 31"):
        idx.search(np.ones(DIM - 1, np.float32))
    with pytest.raises(DimensionMismatchError):
        idx.add(np.ones((2, DIM + 1), np.float32), ["a", "b"])
    with pytest.raises(InvalidInputError):
        idx.search(np.ones((2, 2, DIM), np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad: float) -> None:
    idx = ImageIndex.from_embeddings(clustered(20), ids_of(20))
    v = np.ones((3, DIM), np.float32)
    v[1, 4] = bad
    with pytest.raises(InvalidInputError, match="NaN or inf") as e:
        idx.add(v, ["a", "b", "c"])
    assert e.value.index == 1 and len(idx) == 20
    with pytest.raises(InvalidInputError, match="NaN or inf"):
        idx.search(v[1])
    with pytest.raises(InvalidInputError, match="zero vector"):
        idx.search(np.zeros(DIM, np.float32))


def test_duplicate_ids_are_refused() -> None:
    idx = ImageIndex.from_embeddings(clustered(20), ids_of(20))
    with pytest.raises(DuplicateIdError, match="already in the index"):
        idx.add(clustered(1, seed=9), ["v3"])
    with pytest.raises(DuplicateIdError, match="repeats"):
        idx.add(clustered(2, seed=9), ["new", "new"])
    with pytest.raises(InvalidInputError):
        idx.add(clustered(1, seed=9), [""])
    with pytest.raises(InvalidInputError, match="JSON"):
        idx.add(clustered(1, seed=9), ["x"], [{"bad": object()}])
    assert len(idx) == 20 and "new" not in idx


def test_k_larger_than_collection_and_empty_index() -> None:
    idx = ImageIndex(DIM, exact_threshold=0)
    with pytest.raises(InvalidInputError, match="empty"):
        idx.search(np.ones(DIM, np.float32))
    idx.add(clustered(5), ids_of(5))
    idx.delete("v0")
    for exact in (True, False):
        hits = idx.search(np.ones(DIM, np.float32), k=50, exact=exact)
        assert sorted(h.id for h in hits) == ["v1", "v2", "v3", "v4"]  # every live item, no error
    with pytest.raises(InvalidInputError, match="k must be"):
        idx.search(np.ones(DIM, np.float32), k=0)


def test_bad_parameters() -> None:
    with pytest.raises(InvalidInputError):
        ImageIndex(DIM, space="hamming")
    with pytest.raises(InvalidInputError):
        ImageIndex(0)
    with pytest.raises(InvalidInputError):
        ImageIndex(DIM).ef = 0


@pytest.mark.parametrize("space", ["ip", "l2"])
def test_other_spaces_agree_with_exact(space: str) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((800, DIM)).astype(np.float32)
    idx = ImageIndex.from_embeddings(x, ids_of(800), space=space, exact_threshold=0)
    q = rng.standard_normal((20, DIM)).astype(np.float32)
    approx, s_approx = idx.search_ids(q, 5, exact=False)
    exact, s_exact = idx.search_ids(q, 5, exact=True)
    assert np.mean([len(set(a) & set(e)) / 5 for a, e in zip(approx, exact)]) >= 0.95
    if space == "l2":
        d = ((q[:, None, :] - x[None]) ** 2).sum(-1)
        np.testing.assert_allclose(-s_exact, np.sort(d, axis=1)[:, :5], rtol=1e-4)
    else:
        np.testing.assert_allclose(s_exact, -np.sort(-(q @ x.T), axis=1)[:, :5], rtol=1e-4)


def test_exact_topk_handles_k_equal_n() -> None:
    x = clustered(7)
    labels, scores = exact_topk(x[:2], x, 7, labels=np.arange(100, 107))
    assert labels.shape == (2, 7) and labels[0, 0] == 100 and labels[1, 0] == 101
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


# -- persistence ----------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path: Path) -> None:
    x = clustered(500, seed=6)
    idx = ImageIndex.from_embeddings(
        x, ids_of(500), [{"n": i, "path": f"/img/{i}.png"} for i in range(500)],
        ef=48, model_id="clip-abc", model_hash="f00d", exact_threshold=0, rebuild_threshold=0.9,
    )
    idx.delete(["v1", "v2"])
    idx.save(tmp_path / "idx")
    files = sorted(p.name for p in (tmp_path / "idx").iterdir())  # the lock file, the graph, the sidecar
    assert files[0] == LOCK_NAME and files[2] == SIDECAR_NAME and files[1].startswith("hnsw-") and len(files) == 3
    side = json.loads((tmp_path / "idx" / SIDECAR_NAME).read_text())
    for key in ("schema_version", "dim", "space", "M", "ef_construction", "ef", "count", "ids", "encoder"):
        assert key in side
    assert side["count"] == 498 and side["encoder"] == {"model_id": "clip-abc", "hash": "f00d"}

    back = ImageIndex.load(tmp_path / "idx", exact_threshold=0)
    assert back.ef == 48 and back._hnsw.ef == 48  # hnswlib alone would say 10
    assert len(back) == 498 and back.deleted_count == 2 and back.model_id == "clip-abc"
    q = clustered(10, seed=7)
    assert back.search_ids(q, 5)[0] == idx.search_ids(q, 5)[0]
    assert back.metadata("v3") == {"n": 3, "path": "/img/3.png"}
    back.add(x[1], ["v1"])  # labels continue after the saved ones: no clash with deleted ones
    assert back.search(x[1], 1)[0].id == "v1"
    # saving again replaces the graph file and removes the old one
    back.save(tmp_path / "idx")
    assert len(list((tmp_path / "idx").iterdir())) == 3


def test_load_refuses_another_model_or_dimension(tmp_path: Path) -> None:
    ImageIndex.from_embeddings(clustered(20), ids_of(20), model_id="clip-abc").save(tmp_path / "i")
    with pytest.raises(ArtifactError, match="clip-abc"):
        ImageIndex.load(tmp_path / "i", model_id="clip-other")
    with pytest.raises(DimensionMismatchError, match="32-d"):
        ImageIndex.load(tmp_path / "i", dim=64)
    with pytest.raises(DimensionMismatchError):
        ImageIndex.load(tmp_path / "i", encoder=FakeImageEncoder(dim=16, model_id="clip-abc"))
    assert len(ImageIndex.load(tmp_path / "i", encoder=FakeImageEncoder(model_id="clip-abc"))) == 20


def _graph(path: Path) -> Path:
    return next(p for p in path.iterdir() if p.name.startswith("hnsw-"))


def test_truncated_or_corrupt_files_are_refused(tmp_path: Path) -> None:
    idx = ImageIndex.from_embeddings(clustered(200), ids_of(200))
    root = tmp_path / "i"
    idx.save(root)
    graph = _graph(root)
    good = graph.read_bytes()

    graph.write_bytes(good[: len(good) // 2])
    with pytest.raises(IndexCorruptError, match="truncated"):
        ImageIndex.load(root)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    graph.write_bytes(bytes(flipped))
    with pytest.raises(IndexCorruptError, match="sha256"):
        ImageIndex.load(root)
    # without the hash check, hnswlib's own reader is the last line: sizes still have to agree
    graph.write_bytes(good)
    assert len(ImageIndex.load(root, verify=False)) == 200

    side_path = root / SIDECAR_NAME
    side = json.loads(side_path.read_text())
    side_path.write_text(side_path.read_text()[:100])
    with pytest.raises(IndexCorruptError, match="cannot read"):
        ImageIndex.load(root)
    side_path.write_text(json.dumps({**side, "count": 5}))
    with pytest.raises(IndexCorruptError, match="disagree"):
        ImageIndex.load(root)
    side_path.write_text(json.dumps({**side, "schema_version": 99}))
    with pytest.raises(SchemaVersionError):
        ImageIndex.load(root)
    side_path.write_text(json.dumps({k: v for k, v in side.items() if k != "dim"}))
    with pytest.raises(IndexCorruptError, match="dim"):
        ImageIndex.load(root)
    side_path.write_text(json.dumps({**side, "dim": 16}))  # the trap: hnswlib would load this
    with pytest.raises(IndexCorruptError):
        ImageIndex.load(root)
    graph.unlink()
    side_path.write_text(json.dumps(side))
    with pytest.raises(IndexCorruptError, match="missing"):
        ImageIndex.load(root)
    with pytest.raises(IndexCorruptError, match="missing"):
        ImageIndex.load(tmp_path / "nothing-here")


def test_failed_save_leaves_previous_index_loadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = clustered(300, seed=8)
    root = tmp_path / "i"
    idx = ImageIndex.from_embeddings(x[:200], ids_of(200))
    idx.save(root)
    before = sorted(p.name for p in root.iterdir())
    idx.add(x[200:], [f"w{i}" for i in range(100)])

    def fail_sidecar(path, obj):  # dies half-way through writing the sidecar's temp file
        tmp = Path(path).with_name(".index.json.partial.tmp")
        tmp.write_text(json.dumps(obj)[:50])
        tmp.unlink()
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(persistence_mod, "atomic_write_json", fail_sidecar)
    with pytest.raises(OSError, match="simulated"):
        idx.save(root)
    monkeypatch.undo()
    assert sorted(p.name for p in root.iterdir()) == before  # the new graph file was removed
    assert len(ImageIndex.load(root)) == 200

    def fail_fsync(path):
        raise OSError("I/O error (simulated)")

    monkeypatch.setattr(persistence_mod, "_fsync_file", fail_fsync)
    with pytest.raises(OSError, match="simulated"):
        idx.save(root)
    monkeypatch.undo()
    assert sorted(p.name for p in root.iterdir()) == before
    assert len(ImageIndex.load(root)) == 200
    idx.save(root)
    assert len(ImageIndex.load(root)) == 300


def test_save_refuses_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="non-empty"):
        ImageIndex.from_embeddings(clustered(5), ids_of(5)).save(tmp_path / "d")


# -- images through an encoder --------------------------------------------------------------------
def test_build_from_folder_with_encoder(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "imgs", 30)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png")
    enc = FakeImageEncoder()
    with pytest.raises(InvalidImageError, match="broken"):
        ImageIndex.from_images(tmp_path / "imgs", enc, progress=False)
    idx = ImageIndex(DIM)
    rep = idx.add_images(
        tmp_path / "imgs", enc, batch_size=8, progress=False, skip_invalid=True,
        metadata={"img_003": {"caption": "three"}},
    )
    assert rep.skipped and rep.skipped[0][0] == "broken" and len(rep.added) == 30
    assert idx.model_id == "fake-clip-1"
    hit = idx.search(enc.encode_images([paths[3]])[0], 1)[0]
    assert hit.id == "img_003" and hit.metadata == {"path": str(paths[3].resolve()), "caption": "three"}
    # bytes get generated ids; a different model is refused
    more = idx.add_images([paths[0].read_bytes()], enc, progress=False)
    assert more.added == ["item-30"]
    with pytest.raises(ArtifactError, match="fake-clip-1"):
        idx.add_images([paths[0]], FakeImageEncoder(model_id="other"), progress=False)
    with pytest.raises(DimensionMismatchError):
        idx.add_images([paths[0]], FakeImageEncoder(dim=8), progress=False)


# -- concurrency ----------------------------------------------------------------------------------
def test_rwlock_excludes_writers_from_readers() -> None:
    lock = RWLock()
    state = {"readers": 0, "writers": 0, "max_readers": 0, "bad": 0}
    guard = threading.Lock()

    def reader() -> None:
        for _ in range(300):
            with lock.read():
                with guard:
                    state["readers"] += 1
                    state["max_readers"] = max(state["max_readers"], state["readers"])
                    state["bad"] += state["writers"] != 0
                with guard:
                    state["readers"] -= 1

    def writer() -> None:
        for _ in range(100):
            with lock.write():
                with guard:
                    state["writers"] += 1
                    state["bad"] += state["writers"] != 1 or state["readers"] != 0
                with guard:
                    state["writers"] -= 1

    threads = [threading.Thread(target=reader) for _ in range(4)] + [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert state["bad"] == 0


def test_searches_during_writes_from_threads() -> None:
    x = clustered(3000, seed=11)
    idx = ImageIndex.from_embeddings(x[:1000], ids_of(1000), exact_threshold=0, rebuild_threshold=0.2)
    errors: list[BaseException] = []
    done = threading.Event()

    def searcher(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not done.is_set():
                q = x[rng.integers(0, 3000, 8)]
                for row in idx.search_batch(q, 5, exact=False):
                    assert len(row) == 5
                    assert all(np.isfinite(h.score) and -1.01 <= h.score <= 1.01 for h in row)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def writer() -> None:
        try:
            for start in range(1000, 3000, 100):
                idx.add(x[start : start + 100], [f"v{i}" for i in range(start, start + 100)])
                idx.delete([f"v{i}" for i in range(start - 1000, start - 950)])  # triggers rebuilds
                idx.update(f"v{start}", metadata={"touched": True})
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            done.set()

    threads = [threading.Thread(target=searcher, args=(s,)) for s in range(3)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[0]
    assert len(idx) == 2000 + 1000 - 20 * 50
    assert idx.search(x[2950], 1)[0].id == "v2950"


def test_no_stray_files_after_saves(tmp_path: Path) -> None:
    idx = ImageIndex.from_embeddings(clustered(30), ids_of(30))
    for _ in range(3):
        idx.save(tmp_path / "i")
    names = sorted(os.listdir(tmp_path / "i"))
    assert len(names) == 3 and names[0] == LOCK_NAME and not any(n.endswith(".tmp") for n in names)
