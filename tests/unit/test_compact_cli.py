"""The compact-embedding commands through the real CLI: `clipq index project`, search and `index add` on the
projected index, and `clipq embed --codes ... --projection ...` (tiny real artifacts, real PNG files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipq.app.cli import main

N_IMAGES = 60


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compact_collection")
    rng = np.random.default_rng(1)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / f"img{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def built(collection, tiny_artifacts, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compact_cli")
    art = str(tiny_artifacts)
    assert main(["embed", str(collection), "--out", str(root / "emb"), "--artifacts", art, "--no-progress",
                 "--variant", "fp32"]) == 0
    assert main(["index", "build", "--from-embeddings", str(root / "emb"), "-o", str(root / "full")]) == 0
    return {"root": root, "art": Path(art), "emb": root / "emb", "full": root / "full"}


def test_index_project_then_search_and_add_use_the_projection(built, collection, capsys) -> None:
    import clipq.runtime as rt
    from clipq.runtime.compact import PROJECTION_NAME, Projection
    from clipq.runtime.index import ImageIndex
    from clipq.runtime.templates import embed_texts, parse_templates

    root, art = built["root"], str(built["art"])
    full = ImageIndex.load(built["full"])
    dims = min(full.dim // 2, 16)
    capsys.readouterr()
    assert main(["index", "project", str(built["full"]), "--dimensions", str(dims), "-o", str(root / "short"),
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dim"] == dims and out["from_dim"] == full.dim and out["count"] == N_IMAGES and 0 < out["kept"] <= 1
    proj = Projection.load(root / "short" / PROJECTION_NAME)
    short = ImageIndex.load(root / "short")
    np.testing.assert_allclose(short.get_vectors(full.ids()), proj.apply(full.get_vectors(full.ids())), atol=1e-6)

    # search on the CLI: the text query embedded, templated and projected, as by hand
    assert main(["search", str(root / "short"), "a noisy picture", "-k", "5", "--exact", "--artifacts", art,
                 "--json"]) == 0
    got = [r["id"] for r in json.loads(capsys.readouterr().out)["queries"][0]["results"]]
    backend = rt.connect(art)
    try:
        enc = rt.ClipEncoder(backend)
        q = proj.apply(embed_texts(enc, ["a noisy picture"], parse_templates("default")))
        want = [h.id for h in short.search(q[0], 5, exact=True)]
    finally:
        backend.close()
    assert got == want

    # `index add` projects the new image with the index's own file
    extra = root / "extra.png"
    Image.fromarray(np.full((24, 24, 3), 200, np.uint8)).save(extra)
    assert main(["index", "add", str(root / "short"), str(extra), "--id", "extra", "--artifacts", art,
                 "--no-progress"]) == 0
    again = ImageIndex.load(root / "short")
    assert "extra" in again and again.dim == dims
    backend = rt.connect(art, variant="fp32")
    try:
        raw = rt.ClipEncoder(backend).encode_images([str(extra)])
    finally:
        backend.close()
    assert float((again.get_vectors(["extra"]) * proj.apply(raw)).sum()) > 0.999

    # the unprojected index refuses nothing it did before; a second project into the same place is refused
    assert main(["index", "project", str(built["full"]), "--dimensions", str(dims), "-o", str(root / "short")]) == 2
    assert "already holds an index" in capsys.readouterr().err


def test_embed_writes_compact_copies(built, collection, capsys) -> None:
    from clipq.app.batch_embed import read_embeddings
    from clipq.runtime.compact import Int8Codec, Projection, project_index, unpack_binary

    root, art = built["root"], str(built["art"])
    _, proj = project_index(built["full"], root / "p8", 8)
    capsys.readouterr()
    assert main(["embed", str(collection), "--out", str(built["emb"]), "--artifacts", art, "--no-progress",
                 "--variant", "fp32", "--codes", "int8,ubinary,binary", "--projection", str(root / "p8"),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["shards_done_before"] == summary["shards"]  # the float shards were kept, not redone
    comp = built["emb"] / "compact"
    meta = json.loads((comp / "compact.json").read_text())
    assert meta == summary["compact"] and meta["dim"] == 8 and meta["model_id"] == proj.projected_id()
    vecs, ids, _, _ = read_embeddings(built["emb"])
    assert [json.loads(line) for line in (comp / "ids.jsonl").read_text().splitlines()] == ids
    short = proj.apply(vecs)
    np.testing.assert_allclose(np.load(comp / "float32.npy"), short, atol=1e-6)
    assert Projection.load(comp / "projection.npz").fingerprint == proj.fingerprint
    codec = Int8Codec.load(comp / "int8.npz")
    np.testing.assert_array_equal(np.load(comp / "int8.npy"), codec.encode(short))
    assert np.load(comp / "ubinary.npy").shape == (N_IMAGES, 1)
    np.testing.assert_array_equal(unpack_binary(np.load(comp / "binary.npy"), 8), np.where(short > 0, 1.0, -1.0))

    assert main(["embed", str(collection), "--out", str(built["emb"]), "--artifacts", art, "--codes", "int4"]) == 2
    assert "unknown code 'int4'" in capsys.readouterr().err
    assert main(["embed", str(collection), "--out", str(built["emb"]), "--artifacts", art, "--projection",
                 str(built["full"])]) == 2
    assert "holds no projection.npz" in capsys.readouterr().err
