"""MilvusIndex against a real Milvus Lite file: one behaviour suite run on ImageIndex and on Milvus.

The same calls (add, delete, update, search with filters, ids, metadata) must give the same answers
on the embedded hnswlib index and on a Milvus collection; then what only a store has: URLs, the
typed errors (bad URL, missing collection, another dimension, a server that is down), rollback of a
failed add, and a bulk load that resumes. One Milvus Lite file per module (its engine starts once);
each test gets its own collection in it.
"""

from __future__ import annotations

import itertools
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from _require import require_module

require_module("pymilvus")
require_module("milvus_lite")

from clipq.runtime.errors import (  # noqa: E402
    ArtifactError,
    DimensionMismatchError,
    DuplicateIdError,
    InvalidInputError,
    StoreError,
    StoreUnavailableError,
    UnknownIdError,
)
from clipq.runtime.index import ImageIndex  # noqa: E402
from clipq.runtime.index.milvus import MilvusIndex, NoCollectionError  # noqa: E402
from clipq.runtime.index.milvus_filters import milvus_expr  # noqa: E402
from clipq.runtime.index.milvus_load import bulk_load, load_progress  # noqa: E402
from clipq.runtime.index.milvus_url import MilvusURL, is_store_url  # noqa: E402
from clipq.runtime.index.stores import open_store  # noqa: E402

DIM = 32
_names = itertools.count()


def clustered(n: int, dim: int = DIM, seed: int = 0, clusters: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def lite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("milvus") / "test.db"


def new_milvus(lite_file: Path, dim: int = DIM, **kw) -> MilvusIndex:
    return MilvusIndex.open(f"milvus-lite://{lite_file}/c{next(_names)}", create=True, dim=dim, **kw)


@pytest.fixture(params=["hnswlib", "milvus"])
def make(request: pytest.FixtureRequest, lite_file: Path):
    """A factory of empty indexes of one kind: the suite below runs once per kind."""
    made = []

    def factory(dim: int = DIM, **kw):
        if request.param == "hnswlib":
            return ImageIndex(dim, **kw)
        index = new_milvus(lite_file, dim, **kw)
        made.append(index)
        return index

    factory.kind = request.param
    yield factory
    for index in made:
        index.close()


# -- one suite, both kinds ---------------------------------------------------------------------------
#: metadata of every JSON kind, keys missing here and there, quotes and non-ASCII in strings
METAS = [
    {"kind": "circle", "n": 1, "x": 1.0, "flag": True, "tags": ["a", "b"], "note": None, "name": 'say "hi"'},
    {"kind": "square", "n": 2, "x": 2.5, "flag": False, "name": "café\\bar"},
    {"kind": "circle", "n": 0, "x": 0.0, "flag": False, "tags": []},
    {"kind": 1, "n": "1", "flag": 1},
    {"kind": "triangle", "n": 1.0, "x": -3, "note": "x", "nested": {"a": 1}},
    {},
    {"kind": "circle", "n": 2, "flag": True, "name": "café\\bar"},
    {"kind": "square", "n": True, "x": 1},
]
FILTERS = [
    {"kind": "circle"},
    {"kind": ["circle", "square"]},
    {"kind": ("triangle",)},
    {"kind": {"square", 1}},
    {"n": 1},
    {"n": 1.0},
    {"n": "1"},
    {"n": True},
    {"flag": True},
    {"flag": 0},
    {"x": 1},
    {"x": [2.5, -3]},
    {"name": 'say "hi"'},
    {"name": "café\\bar"},
    {"kind": "circle", "flag": True},
    {"note": None},
    {"tags": ["a", "b"]},
    {"kind": []},
    {"missing": 1},
    lambda m: m.get("n") == 2 or "tags" in m,
]


def _filtered(index, q: np.ndarray, filt) -> list[set[str]]:
    """Every id each query finds under ``filt`` (k = all), as sets: the filter's semantics alone."""
    return [{h.id for h in row} for row in index.search_batch(q, len(METAS) * 30, filter=filt)]


@pytest.mark.parametrize("filt", FILTERS, ids=[str(f) if not callable(f) else "callable" for f in FILTERS])
def test_filters_select_the_same_items(make, filt) -> None:
    x = clustered(len(METAS) * 30, seed=3)
    ids = [f"v{i}" for i in range(len(x))]
    metas = [METAS[i % len(METAS)] for i in range(len(x))]
    ref = ImageIndex.from_embeddings(x, ids, metas)
    index = make()
    index.add(x, ids, metas)
    q = x[:3]
    got, want = _filtered(index, q, filt), _filtered(ref, q, filt)
    assert got == want
    if make.kind == "milvus" and not callable(filt):
        # translated ones ran inside Milvus (the others were evaluated by clipq): both kinds are covered
        assert (milvus_expr(filt) is None) == (filt in ({"note": None}, {"kind": []}))


def test_same_top10_as_the_embedded_index(make) -> None:
    x = clustered(3000, seed=1)
    ids = [f"v{i}" for i in range(len(x))]
    ref = ImageIndex.from_embeddings(x, ids, exact_threshold=0)
    index = make()
    index.add(x, ids)
    rng = np.random.default_rng(2)
    q = x[rng.choice(len(x), 100, replace=False)] + 0.05 * rng.standard_normal((100, DIM)).astype(np.float32)
    truth, truth_scores = ref.search_ids(q, 10, exact=True)
    got, scores = index.search_ids(q, 10)
    overlap = np.mean([len(set(a) & set(b)) for a, b in zip(got, truth)])
    assert overlap >= 9.0
    exact, exact_scores = index.search_ids(q, 10, exact=True)
    assert exact == truth
    np.testing.assert_allclose(exact_scores, truth_scores, atol=1e-5)
    assert scores.shape == (100, 10) and np.all(np.diff(scores, axis=1) <= 1e-6)  # best first, cosine
    one = index.search(q[0], 3)
    assert [h.id for h in one] == got[0][:3] and one[0].score == pytest.approx(float(scores[0, 0]), abs=1e-5)


def test_writes_reads_and_deletes_match(make) -> None:
    x = clustered(60, seed=4)
    ids = [f"v{i}" for i in range(60)]
    metas = [{"n": i, "even": i % 2 == 0} for i in range(60)]
    for index in (ImageIndex.from_embeddings(x, ids, metas), None):
        if index is None:
            index = make()
            index.add(x, ids, metas)
        assert len(index) == 60 and "v3" in index and "nope" not in index and 3 not in index
        assert index.ids() == ids  # insertion order
        assert index.metadata("v5") == {"n": 5, "even": False}
        np.testing.assert_allclose(index.get_vectors(["v2", "v7"]), x[[2, 7]], atol=1e-6)
        # delete: all or nothing, an unknown id deletes nothing
        with pytest.raises(UnknownIdError, match="no-such"):
            index.delete(["v1", "no-such"])
        assert len(index) == 60 and "v1" in index
        assert index.delete(["v1", "v2", "v1"]) == 2
        assert len(index) == 58 and "v1" not in index
        hits = index.search(x[1], 5)
        assert "v1" not in {h.id for h in hits} and "v2" not in {h.id for h in hits}
        with pytest.raises(UnknownIdError):
            index.metadata("v1")
        # a deleted id can come back
        index.add(x[1], ["v1"], [{"back": True}])
        assert index.search(x[1], 1)[0].id == "v1" and index.metadata("v1") == {"back": True}
        # update keeps the id: new metadata, then a new vector
        index.update("v10", metadata={"moved": 1})
        index.update("v10", embedding=x[50])
        assert index.metadata("v10") == {"moved": 1}
        assert {h.id for h in index.search(x[50], 2)} == {"v10", "v50"}
        with pytest.raises(UnknownIdError):
            index.update("gone", metadata={})
        # k above the matching items gives them all
        assert len(index.search(x[0], 100, filter={"even": True})) == 30 - 2  # v2 deleted, v10 re-labelled


def test_bad_input_writes_nothing(make) -> None:
    index = make()
    x = clustered(10, seed=5)
    index.add(x[:5], ["a", "b", "c", "d", "e"])
    with pytest.raises(DuplicateIdError, match="'c'"):
        index.add(x[5:], ["f", "g", "c", "h", "i"])
    with pytest.raises(DuplicateIdError):
        index.add(x[5:7], ["z", "z"])
    with pytest.raises(DimensionMismatchError):
        index.add(np.ones((2, DIM + 1), np.float32), ["p", "q"])
    bad = x[5:7].copy()
    bad[1, 3] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        index.add(bad, ["p", "q"])
    with pytest.raises(InvalidInputError, match="JSON"):
        index.add(x[5:6], ["p"], [{"f": object()}])
    assert len(index) == 5 and "f" not in index and "p" not in index
    with pytest.raises(DimensionMismatchError):
        index.search(np.ones(DIM + 2, np.float32))
    with pytest.raises(InvalidInputError):
        index.search(x[0], 0)


def test_empty_index_refuses_search(make) -> None:
    index = make()
    with pytest.raises(InvalidInputError, match="empty"):
        index.search(np.ones(DIM, np.float32), 3)


def test_add_images_through_an_encoder(make, tmp_path: Path) -> None:
    from tests.unit.test_index import FakeImageEncoder, write_images

    write_images(tmp_path / "imgs", 12)
    enc = FakeImageEncoder()
    index = make(model_id=enc.model_id) if make.kind == "hnswlib" else make(model_id=enc.model_id)
    rep = index.add_images(tmp_path / "imgs", enc, progress=False)
    assert sorted(rep.added) == [f"img_{i:03d}" for i in range(12)] and len(index) == 12
    assert index.metadata("img_004")["path"].endswith("img_004.png")
    with pytest.raises(DuplicateIdError):
        index.add_images(tmp_path / "imgs", enc, progress=False)
    assert len(index) == 12
    with pytest.raises(ArtifactError):
        index.check_encoder(FakeImageEncoder(model_id="another-model"))


# -- what only a store has ---------------------------------------------------------------------------
def test_store_urls_parse_or_fail_naming_the_url() -> None:
    u = MilvusURL.parse("milvus://db.example:19531/photos")
    assert (u.uri, u.collection, u.lite) == ("http://db.example:19531", "photos", False)
    assert MilvusURL.parse("milvus://db/photos").uri == "http://db:19530"
    assert MilvusURL.parse("milvus+https://db:443/p").uri == "https://db:443"
    lite = MilvusURL.parse("milvus-lite://runs/x.db/c_1")
    assert (lite.uri, lite.collection, lite.lite) == ("runs/x.db", "c_1", True)
    assert MilvusURL.parse("milvus-lite:///abs/x.db/c").uri == "/abs/x.db"
    assert is_store_url("milvus-lite://a.db/c") and not is_store_url("runs/index") and not is_store_url(None)
    for bad in (
        "milvus://",
        "milvus://host:port/c",
        "milvus://host:1/",
        "milvus://h:1/bad-name",
        "milvus://h:1/a/b",
        "milvus-lite://x.sqlite/c",
        "redis://h/c",
        "milvus://user:pw@h:1/c",
        "milvus://h:70000/c",
    ):
        with pytest.raises(StoreError) as e:
            MilvusURL.parse(bad)
        assert repr(bad) in str(e.value)


def test_typed_errors_missing_collection_dimension_and_model(lite_file: Path, tmp_path: Path) -> None:
    url = f"milvus-lite://{lite_file}/dims"
    MilvusIndex.open(url, create=True, dim=DIM, model_id="m-1").close()
    with pytest.raises(DimensionMismatchError, match="'dims' holds 32-d"):
        MilvusIndex.open(url, dim=DIM * 2)
    with pytest.raises(DimensionMismatchError, match="dims"):
        open_store(url, create=True, dim=DIM * 2)  # create does not replace another dimension
    with pytest.raises(NoCollectionError, match="no collection 'nothing_here'"):
        MilvusIndex.open(f"milvus-lite://{lite_file}/nothing_here")
    with pytest.raises(StoreError, match="does not exist"):
        MilvusIndex.open(f"milvus-lite://{tmp_path}/no/such/folder.db/c", create=True, dim=4)

    class Enc:
        dim, model_id = DIM, "m-2"

    with pytest.raises(ArtifactError, match="m-1"):
        MilvusIndex.open(url, encoder=Enc())
    with MilvusIndex.open(url) as index:
        assert index.model_id == "m-1" and index.dim == DIM and len(index) == 0


def test_server_down_is_a_typed_error_quickly() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"milvus://127.0.0.1:{port}/c"
    t0 = time.perf_counter()
    with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}"):
        open_store(url, timeout=2.0)
    assert time.perf_counter() - t0 < 10


def test_failed_batch_rolls_back_the_whole_add(lite_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pymilvus.exceptions import MilvusException

    index = new_milvus(lite_file, batch_rows=10)
    x = clustered(30, seed=6)
    index.add(x[:5], [f"keep{i}" for i in range(5)])
    real_insert, calls = index._client.insert, []

    def insert(*args, **kwargs):  # the real Milvus, with its third batch refused as a full disk would
        calls.append(len(args[1]))
        if len(calls) == 3:
            raise MilvusException(code=65535, message="disk quota exceeded")
        return real_insert(*args, **kwargs)

    monkeypatch.setattr(index._client, "insert", insert)
    with pytest.raises(StoreError, match=r"insert failed: disk quota"):
        index.add(x[5:], [f"new{i}" for i in range(25)])
    assert calls == [10, 10, 5]
    # the two batches that went in were deleted again
    assert len(index) == 5 and index.ids() == [f"keep{i}" for i in range(5)]


def test_bulk_load_resumes_without_writing_twice(lite_file: Path) -> None:
    index = new_milvus(lite_file, batch_rows=40)
    x = clustered(300, seed=7)
    shards = [(list(range(s, min(s + 100, 300)))) for s in range(0, 300, 100)]
    calls = {"fail": 1}

    def reader(rows: list[int]):
        def read():
            if rows[0] == 200 and calls["fail"]:
                calls["fail"] -= 1
                raise OSError("disk went away")
            return [f"v{i}" for i in rows], x[rows], [{"i": i} for i in rows]

        return read

    readers, counts = [reader(r) for r in shards], [len(r) for r in shards]
    with pytest.raises(OSError):
        bulk_load(index, readers, counts, "src1", progress=False)
    assert len(index) == 200 and load_progress(index, "src1") == {"shard": 2, "row": 0, "fresh": True}
    rep = bulk_load(index, readers, counts, "src1", progress=False)
    assert (rep.inserted, rep.present, rep.resumed_at) == (100, 0, (2, 0))
    assert len(index) == 300 and load_progress(index, "src1")["done"]
    assert bulk_load(index, readers, counts, "src1", progress=False).inserted == 0
    # a run that wrote a batch but died before recording it: the rerun skips what is there
    index.set_properties({"clipq.load.src2": '{"shard": 1, "row": 40}'})
    index.delete([f"v{i}" for i in range(180, 300)])  # as if rows 140-179 were in, their record lost
    rep = bulk_load(index, readers, counts, "src2", progress=False)
    assert (rep.inserted, rep.present) == (120, 40) and len(index) == 300
    assert sorted(index.ids(), key=lambda s: int(s[1:])) == [f"v{i}" for i in range(300)]
    # another source whose ids are taken: refused before its batch is written
    with pytest.raises(DuplicateIdError):
        bulk_load(index, readers[:1], counts[:1], "src3", progress=False)
    assert len(index) == 300


def test_open_store_dispatches_on_the_target(lite_file: Path, tmp_path: Path) -> None:
    x = clustered(20, seed=8)
    local = open_store(tmp_path / "idx", create=True, dim=DIM)
    assert isinstance(local, ImageIndex)
    local.add(x, [f"v{i}" for i in range(20)])
    local.save(tmp_path / "idx")
    assert len(open_store(str(tmp_path / "idx"), dim=DIM)) == 20
    store = open_store(f"milvus-lite://{lite_file}/dispatch", create=True, dim=DIM, index_type="FLAT", M=8)
    assert isinstance(store, MilvusIndex) and store.index_type == "FLAT"
    store.add(x, [f"v{i}" for i in range(20)])
    assert [h.id for h in store.search(x[4], 1)] == ["v4"]
    rep = store.recall_check(k=5, n_queries=10)
    assert rep.recall == 1.0 and rep.n_queries == 10  # FLAT: Milvus' answer is the exact one
    info = store.info()
    assert (info["store"], info["count"], info["dim"], info["index"]["index_type"]) == (
        f"milvus-lite://{lite_file}/dispatch",
        20,
        DIM,
        "FLAT",
    )


def test_a_lite_file_another_process_holds(tmp_path: Path) -> None:
    """Milvus Lite serves one process at a time: the second gets a StoreError saying so."""
    import subprocess
    import sys

    url = f"milvus-lite://{tmp_path}/held.db/c"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom clipq.runtime.index import MilvusIndex\n"
            f"MilvusIndex.open({url!r}, create=True, dim=4)\nprint('ready', flush=True)\ntime.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreError, match="another process has this Milvus Lite file open"):
            MilvusIndex.open(url)
    finally:
        holder.kill()
        holder.wait()
    with MilvusIndex.open(url) as index:  # free again once that process is gone
        assert len(index) == 0
