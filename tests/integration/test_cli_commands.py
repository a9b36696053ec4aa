"""Every query/ops command driven once through the real entry point, ``clipq.app.cli.main(argv)``.

The commands run on the shared tiny artifacts with the real (exported, onnxruntime) encoder, never a
fake, and each result is compared with an in-process reference computed here through
``clipq.runtime`` on the same artifacts: search ids and scores, index facts, VQA answers, retrieval
metrics, bundle and import embeddings, the benchmark tables, the demo's report.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _require import require_module

from clipq.app.cli import main

pytestmark = pytest.mark.timeout(600)

#: scores printed by the CLI against the reference computed here (float32 dot products, batch shapes
#: may differ between the two paths)
SCORE_ATOL = 1e-5
QUERIES = ["two red circles on the left", "a blue star at the top", "three green squares"]


def _cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _cli_json(capsys, *argv):
    rc, out, err = _cli(capsys, *argv)
    assert rc == 0, f"clipq {' '.join(map(str, argv))} -> {rc}: {err}"
    return json.loads(out)


def _test_images(world: Path) -> tuple[list[str], list[Path]]:
    from clipq.readers import World

    split = World(world).split("test")
    return [str(i) for i in split.image_ids], [Path(p) for p in split.image_paths]


def _encoder(artifacts: Path, **kw):
    import clipq.runtime as rt

    backend = rt.connect(artifacts, **kw)
    return backend, rt.ClipEncoder(backend)


def _topk(scores: np.ndarray, ids: list[str], k: int, drop: set[str] = frozenset()) -> list[tuple[str, float]]:
    order = np.argsort(-scores, kind="stable")
    return [(ids[i], float(scores[i])) for i in order if ids[i] not in drop][:k]


def _assert_same_hits(got: list[dict], want: list[tuple[str, float]]) -> None:
    """Same ids in the same order and the same scores; ids may swap only inside a score tie."""
    assert len(got) == len(want)
    np.testing.assert_allclose([h["score"] for h in got], [s for _, s in want], atol=SCORE_ATOL, rtol=0)
    for n, (h, (wid, ws)) in enumerate(zip(got, want)):
        assert h["rank"] == n + 1
        if h["id"] != wid:  # only a tie may reorder: the other id must score the same
            assert abs(h["score"] - ws) <= SCORE_ATOL, (n, h, wid, ws)


# -- index build / search / info / delete -------------------------------------------------------------
@pytest.fixture(params=["fp32", "int8"])
def clip_variant_artifacts(request, tiny_artifacts_copy):
    """The tiny artifacts with both CLIP towers' CPU default set to one variant: export picks it by
    timing, so a session may get either; the commands must agree with the runtime on both."""
    from clipq.runtime.manifest import Manifest

    m = Manifest.load(tiny_artifacts_copy)
    for name in ("clip_image", "clip_text"):
        spec = m.models[name]
        if request.param != "fp32" and request.param not in spec.variants:
            pytest.skip(f"the export made no {request.param} {name} graph (its parity gate refused it)")
        spec.default_variant = request.param
    m.save()
    return tiny_artifacts_copy


def test_index_build_search_info_delete(clip_variant_artifacts, small_world, tmp_path, capsys):
    from clipq.runtime.index import ImageIndex
    from clipq.runtime.search import ImageSearch
    from clipq.runtime.templates import DEFAULT_TEMPLATES, embed_texts

    tiny_artifacts = clip_variant_artifacts
    ids, paths = _test_images(small_world)
    n = len(ids)
    folder = paths[0].parent
    idx = tmp_path / "test.index"
    art = ["--artifacts", tiny_artifacts]

    built = _cli_json(capsys, "index", "build", folder, "-o", idx, *art, "--json", "--no-progress")
    assert (built["action"], built["added"], built["skipped"], built["count"]) == ("built", n, [], n)

    backend, enc = _encoder(tiny_artifacts)
    try:
        # [N, D], unit rows, in the batches `index build` makes (its --batch-size 64, cut so that two
        # calls overlap): a dynamic-int8 default graph quantises activations per batch, so an image's
        # embedding depends on its batch
        from clipq.runtime.index.ingest import pipeline_batches

        emb = np.concatenate([enc.encode_images([str(paths[i]) for i in r], batch_size=64)
                              for r in pipeline_batches(len(paths), 64)])
        probe = enc.encode_images([str(paths[3])], batch_size=1)[0]  # an image query goes alone
        text_bare = enc.encode_texts(QUERIES)
        text_tpl = embed_texts(enc, QUERIES, DEFAULT_TEMPLATES)  # one batch, as `search` with the three
        text_one = embed_texts(enc, QUERIES[:1], DEFAULT_TEMPLATES)[0]  # and with the first alone
        ref_index = ImageIndex.from_embeddings(emb, ids, [{"path": str(p)} for p in paths],
                                               model_id=enc.model_id)
        ref_default = ImageSearch(ref_index, enc).search_many(QUERIES, 5)
        model_id, dim = enc.model_id, enc.dim
    finally:
        backend.close()

    # the stored vectors are the encoder's
    stored = ImageIndex.load(idx).get_vectors(ids)
    np.testing.assert_allclose(stored, emb, atol=1e-5, rtol=0)

    # info: the index's own facts
    info = _cli_json(capsys, "index", "info", idx, "--json", "--recall", "-k", "5", "--queries", "20")
    assert info["count"] == n and info["deleted"] == 0
    assert (info["dim"], info["model_id"], info["space"]) == (dim, model_id, "cosine")
    assert (info["M"], info["ef_construction"], info["ef"]) == (16, 200, 64)
    assert info["recall"]["k"] == 5 and info["recall"]["n_queries"] == 20
    assert 0.95 <= info["recall"]["recall"] <= 1.0
    rc, out, _ = _cli(capsys, "index", "info", idx)
    assert rc == 0 and f"{n} items (0 deleted" in out and f"dim {dim}, space cosine" in out

    # search, bare text, exact: the numpy reference over the reference embeddings
    res = _cli_json(capsys, "search", idx, *QUERIES, "-k", "5", "--templates", "none", "--exact", *art, "--json")
    assert res["k"] == 5 and [q["query"] for q in res["queries"]] == QUERIES
    for q, t in zip(res["queries"], text_bare):
        _assert_same_hits(q["results"], _topk(emb @ t, ids, 5))
        assert all(h["metadata"]["path"] == str(folder / f"{h['id']}.png") for h in q["results"])

    # search, default templates, the command's default search: ImageSearch over the reference index
    res = _cli_json(capsys, "search", idx, *QUERIES, "-k", "5", *art, "--json")
    for q, want, t in zip(res["queries"], ref_default, text_tpl):
        _assert_same_hits(q["results"], [(h.id, h.score) for h in want])
        _assert_same_hits(q["results"], _topk(emb @ t, ids, 5))

    # --min-score: the same ranking, cut at the score given (the third hit's score keeps three)
    cut = res["queries"][0]["results"][2]["score"]
    kept = _cli_json(capsys, "search", idx, *QUERIES, "-k", "5", "--min-score", str(cut), *art, "--json")
    assert [h["id"] for h in kept["queries"][0]["results"]] == [h["id"] for h in res["queries"][0]["results"][:3]]
    for q in kept["queries"]:
        assert all(h["score"] >= cut for h in q["results"])
    img = _cli_json(capsys, "search", idx, "--image", paths[3], "-k", "4", "--min-score", "1.01", *art, "--json")
    assert img["queries"][0]["results"] == []  # no cosine reaches 1.01

    # image query: the image itself is left out, its neighbours come back by cosine; with a contact sheet
    sheet = tmp_path / "sheet.png"
    res = _cli_json(capsys, "search", idx, "--image", paths[3], "-k", "4", "--contact-sheet", sheet, *art, "--json")
    _assert_same_hits(res["queries"][0]["results"], _topk(emb @ probe, ids, 4, drop={ids[3]}))
    assert res["contact_sheet"] == str(sheet) and sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the text output names the same hits as the JSON
    rc, out, _ = _cli(capsys, "search", idx, QUERIES[0], "-k", "3", *art)
    top = _topk(emb @ text_one, ids, 3)
    assert rc == 0 and out.splitlines()[0] == f'"{QUERIES[0]}": 3 results'
    printed = [line.split() for line in out.splitlines()[1:4]]
    assert [int(p[0]) for p in printed] == [1, 2, 3]
    np.testing.assert_allclose([float(p[1]) for p in printed], [s for _, s in top], atol=5e-5 + SCORE_ATOL)  # 4 decimals
    assert [p[2] for p in printed] == [i for i, _ in top]

    # delete the two best hits of the first query: they no longer come back, the count drops
    gone = [i for i, _ in _topk(emb @ text_tpl[0], ids, 2)]
    deleted = _cli_json(capsys, "index", "delete", idx, *gone, "--json")
    assert (deleted["action"], deleted["deleted"], deleted["count"]) == ("deleted", 2, n - 2)
    info = _cli_json(capsys, "index", "info", idx, "--json")
    assert info["count"] == n - 2 and info["deleted"] == 2
    res = _cli_json(capsys, "search", idx, *QUERIES, "-k", "5", *art, "--json")
    for q, t in zip(res["queries"], text_tpl):
        assert not {h["id"] for h in q["results"]} & set(gone)
        _assert_same_hits(q["results"], _topk(emb @ t, ids, 5, drop=set(gone)))
    # one more: the JSON counts what this call deleted, apart from what awaits the graph's rebuild
    third, kept = [i for i in ids if i not in gone][:2]
    deleted = _cli_json(capsys, "index", "delete", idx, third, "--json")
    assert (deleted["deleted"], deleted["count"], deleted["awaiting_rebuild"]) == (1, n - 3, 3)
    gone.append(third)
    # an unknown id deletes nothing and says so (exit code 2, no traceback)
    rc, _, err = _cli(capsys, "index", "delete", idx, kept, "no-such-id")
    assert rc == 2 and "no-such-id" in err
    info = _cli_json(capsys, "index", "info", idx, "--json")
    assert (info["count"], info["deleted"]) == (n - 3, 3)
    res = _cli_json(capsys, "search", idx, *QUERIES, "-k", "5", "--exact", *art, "--json")
    for q, t in zip(res["queries"], text_tpl):
        _assert_same_hits(q["results"], _topk(emb @ t, ids, 5, drop=set(gone)))
    every = _cli_json(capsys, "search", idx, QUERIES[0], "-k", n, *art, "--json")["queries"][0]["results"]
    assert sorted(h["id"] for h in every) == sorted(set(ids) - set(gone))  # `kept` survived the refused delete

    # add: a copy of an image under a new id; that image's query finds the copy first, at cosine 1
    copy = tmp_path / "copy.png"
    shutil.copy(paths[3], copy)
    added = _cli_json(capsys, "index", "add", idx, copy, "--id", "copy-of-3", *art, "--json", "--no-progress")
    assert (added["action"], added["added"], added["count"]) == ("added", 1, n - 2)
    hit = _cli_json(capsys, "search", idx, "--image", paths[3], "-k", 1, *art, "--json")["queries"][0]["results"][0]
    assert hit["id"] == "copy-of-3" and abs(hit["score"] - 1.0) <= SCORE_ATOL


# -- ask -----------------------------------------------------------------------------------------------
def test_ask_matches_in_process_vqa(tiny_artifacts, small_world, capsys):
    import clipq.runtime as rt
    from clipq.readers import World

    split = World(small_world).split("test")
    by_id = dict(zip(split.image_ids, split.image_paths))
    q0 = split.questions[0]
    image = by_id[q0.image_id]
    questions = [q0.question, *[q.question for q in split.questions[1:] if q.image_id == q0.image_id][:2]]
    assert len(questions) >= 2

    backend = rt.connect(tiny_artifacts)
    try:
        want = rt.VqaModel(backend).ask(str(image), questions, top_k=3)
        vocab = backend.manifest.answer_vocab
    finally:
        backend.close()

    got = _cli_json(capsys, "ask", image, *questions, "-k", "3", "--artifacts", tiny_artifacts, "--json")
    assert got["image"] == str(image) and len(got["answers"]) == len(questions)
    for g, w, q in zip(got["answers"], want, questions):
        assert g["question"] == q and g["answer"] == w.answer and g["answer"] in vocab
        assert abs(g["prob"] - w.prob) <= 1e-6
        assert [t for t, _ in g["top"]] == [t for t, _ in w.top]
        np.testing.assert_allclose([p for _, p in g["top"]], [p for _, p in w.top], atol=1e-6, rtol=0)
        assert g["truncated"] == w.truncated
    rc, out, _ = _cli(capsys, "ask", image, questions[0], "--artifacts", tiny_artifacts)
    assert rc == 0 and f"A: {want[0].answer} ({want[0].prob:.2f})" in out


# -- eval ----------------------------------------------------------------------------------------------
def _recall_bounds(sim: np.ndarray, gt: np.ndarray, delta: float, ks=(1, 5, 10)) -> dict[str, tuple[float, float]]:
    """Recall@K (%) that any scores within ``delta`` of ``sim`` can give: a rank may change only where
    another image scores within ``delta`` of the right one (``recall_at_k`` counts ties pessimistically)."""
    target = sim[np.arange(len(gt)), gt][:, None]
    best_rank = (sim > target + delta).sum(1)
    worst_rank = (sim >= target - delta).sum(1) - 1  # the right image itself is not above itself
    return {f"R@{k}": (float((worst_rank < k).mean() * 100), float((best_rank < k).mean() * 100)) for k in ks}


def test_eval_matches_runtime_retrieval(tiny_artifacts_copy, small_world, tmp_path, capsys):
    """`clipq eval` measures retrieval with PyTorch; the exported fp32 graphs through the runtime, held to
    parity (max_abs <= 1e-4 per embedding entry), must give the same Recall@K wherever no other image
    scores within that tolerance of the right one (at these score gaps: every query, in practice)."""
    from clipq.export.parity import FP32
    from clipq.readers import World
    from clipq.runtime.manifest import Manifest
    from clipq.runtime.templates import DEFAULT_TEMPLATES, SINGLE_TEMPLATE, TEMPLATE_SETS, embed_texts

    before = Manifest.load(tiny_artifacts_copy)
    out_json = tmp_path / "eval.json"
    rc, out, err = _cli(capsys, "eval", tiny_artifacts_copy, "--data", small_world, "--json", out_json)
    assert rc == 0, err
    assert f"written: {out_json}" in out and "Text -> image retrieval" in out
    res = json.loads(out_json.read_text())
    for key in ("vqa", "img2prompt", "reading"):
        if key in before.metrics:
            assert res[key] == before.metrics[key]  # copied from the trainers' records, unchanged
    assert Manifest.load(tiny_artifacts_copy).metrics["retrieval"] == res["retrieval"]

    split = World(small_world).split("test")
    caps: dict[str, list[str]] = {}
    for c in split.captions:
        caps.setdefault(c.image, []).append(c.text)
    keep = [n for n, i in enumerate(split.image_ids) if caps.get(i)]
    first = [caps[split.image_ids[n]][0] for n in keep]
    rows = {("single",): ((SINGLE_TEMPLATE,), True), ("ensemble",): (DEFAULT_TEMPLATES, True),
            ("no_punctuation", "single"): ((SINGLE_TEMPLATE,), False),
            ("no_punctuation", "ensemble"): (DEFAULT_TEMPLATES, False),
            **{("template_rows", name): (tpl, True) for name, tpl in TEMPLATE_SETS.items()}}
    backend, enc = _encoder(tiny_artifacts_copy, variant="fp32")
    try:
        img = enc.encode_images([str(p) for p in split.image_paths])
        sims = {key: embed_texts(enc, first, tpl, punctuation=punct) @ img.T for key, (tpl, punct) in rows.items()}
    finally:
        backend.close()
    r = res["retrieval"]
    assert r["queries"] == len(keep) > 0
    # a score is a dot product of two unit vectors each within max_abs per entry of PyTorch's
    delta = 2 * FP32.max_abs * np.sqrt(img.shape[1])
    exact = 0
    for key, sim in sims.items():
        got = r
        for part in key:
            got = got[part]
        bounds = _recall_bounds(sim, np.array(keep), delta)
        for k, (lo, hi) in bounds.items():
            assert lo <= got[k] <= hi, (key, k, got[k], lo, hi)
            exact += lo == hi
    assert exact >= len(sims) * 3 * 0.8  # the bounds pin most figures down exactly
    s = r["single"]
    assert "| single | " + " | ".join(f"{s[f'R@{k}']:.1f}" for k in (1, 5, 10)) + " |" in out


# -- bundle --------------------------------------------------------------------------------------------
def test_bundle_loads_and_embeds_as_the_source(tiny_artifacts, small_world, tmp_path, capsys):
    from clipq.runtime.manifest import Manifest

    out = tmp_path / "bundle"
    info = _cli_json(capsys, "bundle", tiny_artifacts, out, "--json")
    src = Manifest.load(tiny_artifacts)
    b = Manifest.load(out)
    assert info["bundle"] == str(out) and info["files"] == len(b.files) > 0
    assert not (out / "checkpoints").exists() and not b.checkpoints
    assert not any(rel.startswith("checkpoints/") for rel in b.files)
    assert sorted(src.files) != sorted(b.files) and set(b.files) <= set(src.files)
    assert info["bytes"] == sum(int(i["size"]) for i in b.files.values()) < info["source_bytes"]
    assert info["networks"] == sorted(n for n, s in src.models.items() if s.file)
    # a second bundle into the same (now full) directory is refused, nothing overwritten
    rc, _, err = _cli(capsys, "bundle", tiny_artifacts, out)
    assert rc == 2 and "not empty" in err

    _, paths = _test_images(small_world)
    images = [str(p) for p in paths[:6]]
    vecs = {}
    for name, root in (("src", tiny_artifacts), ("bundle", out)):
        backend, enc = _encoder(root)
        try:
            vecs[name] = (enc.encode_images(images), enc.encode_texts(QUERIES), enc.model_id)
        finally:
            backend.close()
    np.testing.assert_allclose(vecs["bundle"][0], vecs["src"][0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(vecs["bundle"][1], vecs["src"][1], atol=1e-6, rtol=0)
    assert vecs["bundle"][2] == vecs["src"][2]
    # and the query commands take the bundle as their artifacts
    got = _cli_json(capsys, "ask", images[0], "what color are the shapes ?", "--artifacts", out, "--json")
    want = _cli_json(capsys, "ask", images[0], "what color are the shapes ?", "--artifacts", tiny_artifacts, "--json")
    assert got["answers"] == want["answers"]


# -- import --------------------------------------------------------------------------------------------
def _import_helpers():
    """tests/unit/test_import.py's checkpoint writer and transformers reference, under a private name
    (importing it as ``test_import`` would bypass pytest's assertion rewriting of that module)."""
    path = Path(__file__).resolve().parents[1] / "unit" / "test_import.py"
    spec = importlib.util.spec_from_file_location("_clipq_cli_import_helpers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_import_command_matches_transformers(tmp_path, capsys):
    require_module("torch")
    require_module("transformers")
    from clipq.export.parity import FP32
    from clipq.runtime.manifest import Manifest

    h = _import_helpers()
    src = h.save_checkpoint(tmp_path / "ckpt", image_size=32, patch=8, vision_width=64, text_width=48, projection=24,
                            context=20)
    art = tmp_path / "art"
    rep = _cli_json(capsys, "import", src, "--out", art, "--no-int8", "--json")
    assert rep["networks"] == ["clip_image", "clip_text"]
    m = Manifest.load(art)
    assert m.dims["clip_embed"] == 24 and m.preprocessing["size"] == 32 and m.tokenizers["clip"]["max_length"] == 20
    for name in rep["networks"]:
        par = m.model(name).parity["fp32"]
        assert par["passed"] and par["min_cos"] >= FP32.min_cos and par["max_abs"] <= FP32.max_abs
        assert set(m.model(name).variants) <= {"fp32"}  # --no-int8: no reduced graphs
    # a second import into the same directory is refused without --force
    rc, _, err = _cli(capsys, "import", src, "--out", art, "--no-int8")
    assert rc == 2 and "not empty" in err

    # images at the model's input size (no resampling on either side) and odd sizes (resampled)
    from PIL import Image

    rng = np.random.default_rng(1)
    exact = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    texts = h.TEXTS
    want_img, want_txt = h._reference(src, exact, texts)
    got_img, got_txt = h._runtime(art, exact, texts)
    for got, want in ((got_img, want_img), (got_txt, want_txt)):
        assert (got * want).sum(1).min() >= FP32.min_cos
        assert np.abs(got - want).max() <= FP32.max_abs
    photos = h._photos(4)
    want_img, _ = h._reference(src, photos, texts)
    got_img, _ = h._runtime(art, photos, texts)
    # large images are reduced at the size the model needs (docs/export.md): within the draft gate
    assert (got_img * want_img).sum(1).min() >= 0.999


def test_import_command_int8_default_within_its_gate(tmp_path, capsys):
    """Without --no-int8 the import also exports OpenVINO's IR and NNCF int8 (OpenVINO is installed by
    `make test`) and records each tower's CPU default measured here, across both engines; the default
    runtime then embeds within the gate of the graph it runs against transformers' own."""
    require_module("torch")
    require_module("transformers")
    require_module("openvino")
    require_module("nncf")
    import clipq.runtime as rt
    from clipq.export.parity import FP32, REDUCED
    from clipq.runtime.backends.common import cpu_facts
    from clipq.runtime.manifest import Manifest
    from clipq.runtime.records import CpuDefault

    h = _import_helpers()
    src = h.save_checkpoint(tmp_path / "ckpt", image_size=32, patch=8, vision_width=64, text_width=48, projection=24,
                            context=20, seed=3)
    art = tmp_path / "art"
    rc, out, err = _cli(capsys, "import", src, "--out", art)
    assert rc == 0, err
    assert f"imported {src} -> {art}" in out and "networks: clip_image, clip_text" in out
    m = Manifest.load(art)
    host = cpu_facts()["flags"]
    gate = {}
    for name in ("clip_image", "clip_text"):
        spec = m.model(name)
        assert "ov_fp32" in spec.variants, f"{name}: the import exported no OpenVINO IR"
        for variant in spec.variants:
            assert spec.parity[variant]["passed"] and spec.parity[variant]["min_cos"] >= REDUCED.min_cos
        rec = CpuDefault.of(spec)
        assert rec is not None and rec.measured_like(host), f"{name}: no CPU default measured on this machine"
        # both engines were timed (one over 2x slower at batch 1 is dropped after that batch)
        assert set(rec.details["ms"]) | set(rec.details["dropped"]) >= {"onnxruntime/fp32", "openvino/ov_fp32"}
        runs_fp32 = (rec.engine, rec.variant) == ("onnxruntime", "fp32")
        gate[name] = FP32.min_cos if runs_fp32 else REDUCED.min_cos  # OpenVINO's IR may compute in bf16
    images = h._photos(4, seed=5)
    want_img, want_txt = h._reference(src, images, h.TEXTS)
    backend = rt.connect(art)
    try:
        enc = rt.ClipEncoder(backend)
        got_img, got_txt = enc.encode_images(images), enc.encode_texts(h.TEXTS)
    finally:
        backend.close()
    # images over 3x the model's size are reduced at the size it needs: at most the draft gate (0.999)
    assert (got_img * want_img).sum(1).min() >= min(gate["clip_image"], 0.999)
    assert (got_txt * want_txt).sum(1).min() >= gate["clip_text"]
    rc, out, err = _cli(capsys, "import", src, "--out", tmp_path / "ort", "--no-openvino")  # the fast path
    assert rc == 0, err
    assert all(not v.startswith("ov_") for n in ("clip_image", "clip_text")
               for v in Manifest.load(tmp_path / "ort").model(n).variants)


# -- bench ---------------------------------------------------------------------------------------------
def test_bench_index_quick(tmp_path, capsys):
    """`clipq bench --target index --quick` (5,000 x 64, every library), one build thread so that the
    graphs are reproducible: clipq's recall row is recomputed here from the same vectors."""
    from clipq.app.bench.index import EFS, LIBS, TARGET_RECALL, clustered_vectors
    from clipq.runtime.index import ImageIndex

    out = tmp_path / "bench"
    rc, stdout, err = _cli(capsys, "bench", "--target", "index", "--quick", "--threads", 1, "--out", out)
    assert rc == 0, err
    res = json.loads((out / "index.json").read_text())
    assert (out / "index.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "index.md").read_text()
    c = res["config"]
    n, dim, nq = c["n"], c["dim"], c["queries"]
    assert (res["target"], n, dim, nq, c["k"], c["quick"], c["threads"]) == ("index", 5000, 64, 200, 10, True, 1)
    assert md.startswith(f"## Index benchmark ({n:,} x {dim}, k=10)")
    libs = [lib for lib in LIBS if lib in res["builds"]]
    assert {"hnswlib", "clipq"} <= set(libs) and len(res["rows"]) == len(EFS) * len(libs)
    for lib in libs:
        rows = sorted((r for r in res["rows"] if r["lib"] == lib), key=lambda r: r["ef"])
        assert [r["ef"] for r in rows] == list(EFS)
        for r in rows:
            assert 0.0 < r["recall"] <= 1.0 and r["qps_1t"] > 0 and r["qps_mt"] > 0
            assert f"| {lib} | {r['ef']} | {r['recall']:.4f} |" in md
        # recall grows with ef, and at the largest it clears the bench's own target
        assert rows[-1]["recall"] >= rows[0]["recall"] and rows[-1]["recall"] >= TARGET_RECALL
        assert res["builds"][lib]["build_s"] > 0
    assert res["exact"]["qps_1t"] > 0 and len(res["exact"]["qps_1t_rounds"]) == len(EFS)
    assert set(res["per_query_qps_ef64"]) == {"hnswlib", "clipq"} and min(res["per_query_qps_ef64"].values()) > 0
    p = res["persist"]
    assert p["save_s"] > 0 and p["load_s"] > 0 and p["file_mb"] > 0 and p["ef_after_load"] == 64
    t = res["targets"]
    s = t["speedup_at_recall"]
    assert s["recall"] >= TARGET_RECALL and s["speedup"] > 0 and s["ef"] in EFS
    assert {"wrapper_overhead_batch", "wrapper_overhead_one_query", "save_load"} <= set(t)
    assert f"wrote {out / 'index.json'}" in stdout

    # the reference: the same vectors, the same single-threaded graph, exact truth by numpy
    data = clustered_vectors(n + nq, dim, n_clusters=c["clusters"], spread=1.0, seed=0)
    x, q = data[:n], data[n:]
    truth = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :10]
    index = ImageIndex(dim, space="cosine", M=c["M"], ef_construction=c["ef_construction"], capacity=n,
                       num_threads=1, exact_threshold=0)
    index.add(x, [str(i) for i in range(n)])
    for r in (r for r in res["rows"] if r["lib"] == "clipq"):
        index.ef = r["ef"]
        found = index.search_batch(q, 10, exact=False)
        recall = np.mean([len({int(h.id) for h in row} & set(tr.tolist())) / 10 for row, tr in zip(found, truth)])
        assert abs(recall - r["recall"]) <= 1e-9, (r["ef"], recall, r["recall"])


def test_bench_embed_quick(tiny_artifacts, small_world, tmp_path, capsys):
    _, paths = _test_images(small_world)
    out = tmp_path / "bench"
    rc, stdout, err = _cli(capsys, "bench", "--target", "embed", "--quick", "--embed-modes", "in-process",
                           "--artifacts", tiny_artifacts, "--embed-images", paths[0].parent, "--out", out)
    assert rc == 0, err
    res = json.loads((out / "embed.json").read_text())
    assert (out / "embed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res["artifacts"] == str(tiny_artifacts) and res["notes"] == {} and res["sizing"] == {}
    (row,) = res["rows"]
    assert row["mode"] == "in-process" and row["images"] == row["embedded"] == len(paths)
    assert row["images_per_s"] > 0 and row["encode_images_per_s"] > 0 and row["wall_s"] > 0
    # images/s can not exceed the images over the whole wall time by more than the start-up it leaves out
    # (both figures are rounded: wall_s to 1 ms, images/s to 0.1)
    assert len(paths) / (row["wall_s"] + 0.0005) <= (row["images_per_s"] + 0.05) * 1.01
    md = (out / "embed.md").read_text()
    assert f"| in-process | {row['workers']} | {len(paths)} | {row['images_per_s']} |" in md
    assert md in stdout


# -- demo ----------------------------------------------------------------------------------------------
def test_demo_short_run(tiny_artifacts, tmp_path, capsys):
    """`clipq demo` without training (the tiny artifacts stand in) or Triton: its own small world, then
    evaluation, one query of each kind, the index and its searches; checked against the runtime."""
    import clipq.runtime as rt
    from clipq.runtime.index import ImageIndex
    from clipq.runtime.search import ImageSearch

    out = tmp_path / "demo"
    out.mkdir()
    shutil.copytree(tiny_artifacts, out / "artifacts")
    rc, stdout, err = _cli(capsys, "demo", "--out", out, "--size", "small", "--stages", "data,eval,query,index",
                           "--quiet")
    assert rc == 0, err
    rep = json.loads((out / "demo.json").read_text())
    assert list(rep["timings_s"]) == ["data", "eval", "query", "index"]
    assert json.loads((out / "data" / "world.json").read_text())["size"] == "small"
    assert (out / "artifacts" / "eval.json").is_file() and rep["eval"]["retrieval"]["queries"] > 0
    assert (out / "search_contact_sheet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"clipq app --artifacts {out / 'artifacts'} --index {out / 'test.index'}" in stdout

    ids, paths = _test_images(out / "data")
    backend = rt.connect(out / "artifacts")
    try:
        enc = rt.ClipEncoder(backend)
        last_q = "where are the shapes ?"  # the demo's last VQA question, the one its report keeps
        want = rt.VqaModel(backend).ask([str(paths[0])], [last_q], top_k=3)[0]
        index = ImageIndex.load(out / "test.index", encoder=enc)
        emb = enc.encode_images([str(p) for p in paths], batch_size=64)  # the index's batches
        queries = list(rep["index"]["searches"])
        ref = ImageSearch(index, enc).search_many(queries, 5)
    finally:
        backend.close()
    q = rep["query"]
    assert q["image"] == str(paths[0])
    assert q["vqa"]["answer"] == want.answer and abs(q["vqa"]["prob"] - want.prob) <= 1e-6
    assert [t for t, _ in q["vqa"]["top"]] == [t for t, _ in want.top]
    # the index holds every test image with the runtime's embeddings; searches as ImageSearch gives them
    assert sorted(index.ids()) == sorted(ids)
    assert Path(rep["index"]["path"]).parent == out.resolve() / "test.index"
    np.testing.assert_allclose(index.get_vectors(ids), emb, atol=1e-5, rtol=0)
    assert 0.95 <= rep["index"]["recall@10"] <= 1.0
    for qtext, hits in zip(queries, ref):
        assert rep["index"]["searches"][qtext] == [h.id for h in hits]
