"""``--store milvus-lite://...`` through the real CLI and the app, with the real (exported) encoder.

The same images go into an index directory and into a Milvus Lite collection; ``clipq search`` must
answer the same on both, ``index add / delete / info`` must act on the collection, a ``clipq embed``
output must load (and a rerun must find nothing left to load), and the app started on the store must
search it. Bad URLs, a collection of another dimension and a Milvus that is down end in one line
naming them, never a traceback.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
from _require import require_module

require_module("pymilvus")
require_module("milvus_lite")

from clipq.app.cli import main  # noqa: E402

pytestmark = pytest.mark.timeout(600)

QUERIES = ["two red circles on the left", "a blue star at the top"]


def _cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _cli_json(capsys, *argv):
    rc, out, err = _cli(capsys, *argv)
    assert rc == 0, f"clipq {' '.join(map(str, argv))} -> {rc}: {err}"
    return json.loads(out)


def _folder(small_world: Path) -> Path:
    from clipq.readers import World

    return Path(World(small_world).split("test").image_paths[0]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_round_trip_on_a_milvus_lite_store(tiny_artifacts, small_world, tmp_path, capsys):
    folder = _folder(small_world)
    art = ["--artifacts", tiny_artifacts]
    url = f"milvus-lite://{tmp_path}/store.db/photos"
    local = tmp_path / "local.index"
    built = _cli_json(capsys, "index", "build", folder, "--store", url, *art, "--json", "--no-progress")
    ref = _cli_json(capsys, "index", "build", folder, "-o", local, *art, "--json", "--no-progress")
    n = ref["count"]
    assert built["count"] == n and built["store"] == url and built["added"] == n

    # search: the same hits as the index directory (ids, and scores within float32 noise)
    got = _cli_json(capsys, "search", "--store", url, *QUERIES, "-k", "5", *art, "--json")
    want = _cli_json(capsys, "search", local, *QUERIES, "-k", "5", *art, "--json")
    for g, w in zip(got["queries"], want["queries"]):
        assert g["query"] == w["query"]
        np.testing.assert_allclose(
            [h["score"] for h in g["results"]], [h["score"] for h in w["results"]], atol=1e-5
        )
        assert {h["id"] for h in g["results"]} == {h["id"] for h in w["results"]}
    # a filter on the stored metadata, and a store URL given where the index directory goes
    first = got["queries"][0]["results"][0]
    hit_path = first["metadata"]["path"]
    filtered = _cli_json(capsys, "search", url, QUERIES[1], "--filter", f"path={hit_path}", *art, "--json")
    assert [h["id"] for h in filtered["queries"][0]["results"]] == [first["id"]]

    # info, delete (unknown ids delete nothing), add
    info = _cli_json(
        capsys, "index", "info", "--store", url, "--json", "--recall", "-k", "5", "--queries", "10"
    )
    assert (info["count"], info["collection"], info["index"]["index_type"]) == (n, "photos", "HNSW")
    assert info["recall"]["recall"] >= 0.9
    rc, _, err = _cli(capsys, "index", "delete", "--store", url, first["id"], "no-such-id")
    assert rc == 2 and "no-such-id" in err and "Traceback" not in err
    deleted = _cli_json(capsys, "index", "delete", "--store", url, first["id"], "--json")
    assert deleted["deleted"] == 1 and deleted["count"] == n - 1
    after = _cli_json(capsys, "search", "--store", url, QUERIES[0], "-k", "5", *art, "--json")
    assert first["id"] not in {h["id"] for h in after["queries"][0]["results"]}
    added = _cli_json(
        capsys, "index", "add", "--store", url, hit_path, "--id", "again", *art, "--json", "--no-progress"
    )
    assert added["added"] == 1 and added["count"] == n
    again = _cli_json(capsys, "search", "--store", url, QUERIES[0], "-k", "1", *art, "--json")
    assert again["queries"][0]["results"][0]["id"] == "again"

    # build refuses to replace a collection without --force
    rc, _, err = _cli(capsys, "index", "build", folder, "--store", url, *art, "--no-progress")
    assert rc == 2 and "--force" in err


def test_bulk_load_from_embed_shards_resumes(tiny_artifacts, small_world, tmp_path, capsys):
    from clipq.runtime.index import MilvusIndex

    folder = _folder(small_world)
    emb = tmp_path / "emb"
    assert (
        _cli(
            capsys,
            "embed",
            folder,
            "--out",
            emb,
            "--shard-size",
            16,
            "--artifacts",
            tiny_artifacts,
            "--no-progress",
        )[0]
        == 0
    )
    summary = json.loads((emb / "embed.json").read_text())
    url = f"milvus-lite://{tmp_path}/bulk.db/from_shards"
    first = _cli_json(
        capsys, "index", "build", "--from-embeddings", emb, "--store", url, "--json", "--no-progress"
    )
    assert first["load"]["inserted"] == first["count"] == first["load"]["rows"] == summary["embedded"]
    assert (
        first["model_id"] == summary["model_id"] and first["dim"] == summary["dim"] and summary["shards"] > 1
    )
    again = _cli_json(
        capsys, "index", "build", "--from-embeddings", emb, "--store", url, "--json", "--no-progress"
    )
    assert again["load"]["inserted"] == 0 and again["count"] == first["count"]
    # an interrupted load (the record says shard 1): the rerun writes only what is missing
    with MilvusIndex.open(url) as index:
        key = first["load"]["key"]
        index.set_properties({f"clipq.load.{key}": '{"shard": 1, "row": 0}'})
        ids = index.ids()
        index.delete(ids[16:])
    resumed = _cli_json(
        capsys, "index", "build", "--from-embeddings", emb, "--store", url, "--json", "--no-progress"
    )
    assert resumed["load"]["inserted"] == first["count"] - 16 and resumed["count"] == first["count"]
    assert resumed["load"]["resumed_at"] == [1, 0]


def test_cli_store_errors_name_what_was_wrong(tiny_artifacts, tmp_path, capsys):
    from clipq.runtime.index import MilvusIndex

    art = ["--artifacts", tiny_artifacts]
    port = _free_port()
    cases = [
        (f"milvus://127.0.0.1:{port}/photos", f"127.0.0.1:{port}"),
        ("milvus://host:notaport/photos", "bad store URL"),
        (f"milvus-lite://{tmp_path}/x.db/missing", "no collection 'missing'"),
        (f"milvus-lite://{tmp_path}/nowhere/x.db/c", "does not exist"),
    ]
    MilvusIndex.open(f"milvus-lite://{tmp_path}/x.db/tiny", create=True, dim=3).close()
    cases.append((f"milvus-lite://{tmp_path}/x.db/tiny", "holds 3-d vectors"))
    for url, words in cases:
        rc, out, err = _cli(capsys, "search", "--store", url, "a red circle", *art)
        assert rc == 2 and words in err and "Traceback" not in err, (url, err)
        assert out == ""


def test_app_searches_a_milvus_store(tiny_artifacts, small_world, tmp_path, capsys):
    import httpx

    import clipq.runtime as rt
    from clipq.app.web.server import create_app, open_services, serve_in_thread
    from clipq.app.web.settings import AppSettings
    from clipq.runtime.index import MilvusIndex
    from clipq.runtime.search import ImageSearch

    folder = _folder(small_world)
    url = f"milvus-lite://{tmp_path}/app.db/photos"
    _cli_json(
        capsys,
        "index",
        "build",
        folder,
        "--store",
        url,
        "--artifacts",
        tiny_artifacts,
        "--json",
        "--no-progress",
    )
    backend = rt.connect(tiny_artifacts)
    try:
        enc = rt.ClipEncoder(backend)
        with MilvusIndex.open(url, encoder=enc) as index:
            for n, item_id in enumerate(index.ids()[:4]):  # a field for the page's filter menus
                index.update(item_id, metadata={**index.metadata(item_id), "kind": "ab"[n % 2]})
            want = ImageSearch(index, enc).search(QUERIES[0], 3)
            n = len(index)
    finally:
        backend.close()
    svc = open_services(AppSettings(), artifacts=str(tiny_artifacts), index=url)
    with serve_in_thread(create_app(svc)) as base, httpx.Client(base_url=base, timeout=60) as c:
        info = c.get("/v1/info").json()
        assert info["index"]["count"] == n and info["index"]["fields"] == {"kind": ["a", "b"]}
        got = c.post("/v1/search", json={"text": QUERIES[0], "k": 3}).json()["results"]
        assert [h["id"] for h in got] == [h.id for h in want]
        np.testing.assert_allclose([h["score"] for h in got], [h.score for h in want], atol=1e-5)
        like = c.post("/v1/search", json={"id": want[0].id, "k": 2}).json()["results"]
        assert len(like) == 2 and want[0].id not in {h["id"] for h in like}
        assert c.get(f"/thumbs/{want[0].id}?size=32").status_code == 200
        assert c.get("/healthz").json()["index_items"] == n
