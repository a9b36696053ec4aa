"""An imported SigLIP and SigLIP 2 down every path a CLIP takes: index, search, embed, the app, Triton.

Small checkpoints saved here as the hub ships them (tests/_siglip.py) are imported with ``clipq import``;
then the real commands and servers run on them and every result is compared with the in-process
runtime on the same artifacts: ``clipq index build`` + ``clipq search`` (scores are SigLIP's
``sigmoid(logit_scale * cos + logit_bias)`` of the runtime's embeddings), ``ImageSearch``'s
``min_score``, ``clipq embed``'s shards, the deploy bundle, the app's ``/v1/embeddings`` and ``/v1/search``, and a thin
client of a real tritonserver (cosine >= 1 - 1e-5 against in process, sigmoid scores within 1e-4).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _require import require_module

torch = require_module("torch")
require_module("transformers")
require_module("sentencepiece")

import _siglip  # noqa: E402

from clipq.app.cli import main  # noqa: E402

pytestmark = pytest.mark.timeout(600)
KINDS = ("siglip", "siglip2")
QUERIES = ["a photo of the cat", "two red circles on the left!", "Ein Hund im Schnee"]


@pytest.fixture(scope="module")
def siglips(tmp_path_factory):
    """kind -> artifacts (fp32 graphs: results must not depend on int8's per-batch quantisation); a folder of images."""
    root = tmp_path_factory.mktemp("siglip_paths")
    folder = root / "images"
    folder.mkdir()
    for i, img in enumerate(_siglip.photos(18, seed=11)):
        img.save(folder / f"img_{i:02d}.{'png' if i % 2 else 'jpg'}")
    out = {}
    for kind in KINDS:
        src = _siglip.save_siglip(root / f"{kind}-ckpt", kind=kind, seed=5)
        assert (
            main(["import", str(src), "--out", str(root / f"{kind}-art"), "--no-int8", "--threads", "2"]) == 0
        )
        out[kind] = root / f"{kind}-art"
    return out, folder


def _cli_json(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    assert rc == 0, f"clipq {' '.join(map(str, argv))} -> {rc}: {cap.err}"
    return json.loads(cap.out)


def _sigmoid(m, cos):
    s = m.extra["scores"]
    return 1.0 / (1.0 + np.exp(-(s["logit_scale"] * np.asarray(cos, np.float64) + s["logit_bias"])))


@pytest.mark.parametrize("kind", KINDS)
def test_index_search_embed_and_app(siglips, kind, tmp_path, capsys):
    import httpx

    import clipq.runtime as rt
    from clipq.app.web.server import create_app, open_services, serve_in_thread
    from clipq.app.web.settings import AppSettings
    from clipq.runtime.index import ImageIndex
    from clipq.runtime.search import ImageSearch
    from clipq.runtime.templates import DEFAULT_TEMPLATES, embed_texts

    arts, folder = siglips
    art = arts[kind]
    paths = sorted(folder.iterdir())
    ids = [p.stem for p in paths]
    idx = tmp_path / "index"
    built = _cli_json(
        capsys, "index", "build", folder, "-o", idx, "--artifacts", art, "--json", "--no-progress"
    )
    assert built["count"] == len(paths)

    backend = rt.connect(art, threads=2)
    try:
        enc = rt.ClipEncoder(backend)
        assert enc.pair_score.kind == "sigmoid"
        emb = enc.encode_images([str(p) for p in paths])
        q = embed_texts(enc, QUERIES, DEFAULT_TEMPLATES)
        want = _sigmoid(backend.manifest, q @ emb.T)  # [Q, N]

        # clipq search: SigLIP's probabilities, best first, equal to the runtime's
        res = _cli_json(capsys, "search", idx, *QUERIES, "-k", "5", "--exact", "--artifacts", art, "--json")
        for qi, entry in enumerate(res["queries"]):
            got = entry["results"]
            order = np.argsort(-want[qi], kind="stable")[:5]
            np.testing.assert_allclose([h["score"] for h in got], want[qi][order], atol=1e-5, rtol=0)
            assert all(0.0 < h["score"] < 1.0 for h in got)

        # min_score in the family's score
        index = ImageIndex.load(idx)
        search = ImageSearch(index, enc)
        cut = float(np.median(want[0]))
        kept = search.search(QUERIES[0], len(paths), exact=True, min_score=cut)
        assert kept and all(h.score >= cut for h in kept)
        assert len(kept) == int((want[0] >= cut).sum())

        # clipq embed: the shards hold the runtime's embeddings
        out = tmp_path / "emb"
        assert main(["embed", str(folder), "--out", str(out), "--artifacts", str(art), "--threads", "2"]) == 0
        capsys.readouterr()
        shard = np.load(out / "shards" / "shard-00000.npy")
        rows = [
            json.loads(line)["id"] for line in (out / "shards" / "shard-00000.jsonl").read_text().splitlines()
        ]
        ref = emb[[ids.index(Path(r).stem if "/" in r else r) for r in rows]]
        assert (shard * ref).sum(1).min() >= 1 - 1e-5

        # the deploy bundle (no torch weights) carries the family's score and gives the same embeddings
        from clipq.runtime.manifest import Manifest

        bundle = Manifest.load(art).bundle(tmp_path / "bundle")
        assert bundle.extra["scores"] == backend.manifest.extra["scores"] and not bundle.checkpoints
        bb = rt.connect(bundle.root, threads=2)
        try:
            benc = rt.ClipEncoder(bb)
            assert benc.pair_score == enc.pair_score
            assert (benc.encode_texts(QUERIES) * enc.encode_texts(QUERIES)).sum(1).min() >= 1 - 1e-5
        finally:
            bb.close()

        # the app: /v1/embeddings equals the runtime; /v1/search says what its scores are
        svc = open_services(AppSettings(), artifacts=str(art), index=str(idx))
        with serve_in_thread(create_app(svc)) as url, httpx.Client(base_url=url, timeout=60) as c:
            r = c.post("/v1/embeddings", json={"input": QUERIES, "model": "clip-text"})
            assert r.status_code == 200, r.text
            got = np.array([d["embedding"] for d in r.json()["data"]], np.float32)
            assert (got * enc.encode_texts(QUERIES)).sum(1).min() >= 1 - 1e-5
            r = c.post("/v1/search", json={"text": QUERIES[0], "k": 3, "exact": True})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["query"]["score"] == "sigmoid probability"
            np.testing.assert_allclose(
                [h["score"] for h in body["results"]], np.sort(want[0])[::-1][:3], atol=1e-5
            )
    finally:
        backend.close()


@pytest.mark.triton
@pytest.mark.parametrize("kind", KINDS)
def test_thin_client_through_triton(siglips, kind, tmp_path):
    from _require import require_triton

    import clipq.runtime as rt
    from clipq.serving import RenderOptions, render_repository
    from clipq.serving.server import TritonServer

    require_triton()
    arts, folder = siglips
    art = arts[kind]
    paths = sorted(folder.iterdir())
    images = [p.read_bytes() for p in paths]
    texts = [*QUERIES, *_siglip.texts(9, seed=3)]
    local = rt.connect(art, threads=2, variant="fp32")
    try:
        enc = rt.ClipEncoder(local)
        want_img, want_txt = enc.encode_images(images), enc.encode_texts(texts)
        want_scores = enc.scores(want_img, want_txt)
    finally:
        local.close()
    repo = render_repository(art, tmp_path / "repo", RenderOptions(variant="fp32"))
    srv = TritonServer(repo.path)
    srv.start()
    try:
        for url in (srv.grpc_url, srv.http_url):
            thin = rt.connect(server=url)  # no artifacts: the server decodes, resizes and tokenises
            try:
                remote = rt.ClipEncoder(thin)
                assert remote.remote and remote.pair_score == enc.pair_score
                img, txt = remote.encode_images(images), remote.encode_texts(texts)
                assert (img * want_img).sum(1).min() >= 1 - 1e-5
                assert (txt * want_txt).sum(1).min() >= 1 - 1e-5
                assert np.abs(remote.scores(img, txt) - want_scores).max() <= 1e-4
            finally:
                thin.close()
    finally:
        srv.stop()
    assert srv.leftover_processes() == []
