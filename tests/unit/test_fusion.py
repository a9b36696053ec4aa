"""Model B (KNN prompt fusion), the ensemble reference, the alpha/K sweep."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clipq.runtime.errors import ArtifactError, IndexCorruptError, InvalidInputError, ShapeError
from clipq.runtime.fusion import (
    CONFIG_NAME,
    EMBEDS_NAME,
    Img2PromptSettings,
    KnnPromptFusion,
    check_alpha,
    describe_embeds,
    ensemble,
    neighbour_weights,
)
from clipq.runtime.index import ImageIndex
from clipq.runtime.sweep import sweep
from clipq.runtime.vectors import cosine_rows, mean_cosine

D, P = 24, 16  # image and prompt dims (384 in the real model; the code does not care)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def world() -> dict[str, np.ndarray | list[str]]:
    """Ten image clusters; every image of a cluster shares its cluster's prompt (plus noise)."""
    rng = np.random.default_rng(0)
    n_clusters, per = 10, 40
    img_c = rng.standard_normal((n_clusters, D))
    prm_c = unit(rng.standard_normal((n_clusters, P)))
    labels = np.repeat(np.arange(n_clusters), per)
    images = unit(img_c[labels] + 0.3 * rng.standard_normal((labels.size, D)))
    prompts = unit(prm_c[labels] + 0.2 * rng.standard_normal((labels.size, P)))
    texts = [f"prompt of cluster {c}" for c in labels]
    q_labels = np.arange(n_clusters).repeat(3)
    queries = unit(img_c[q_labels] + 0.3 * rng.standard_normal((q_labels.size, D)))
    return {
        "images": images, "prompts": prompts, "texts": texts, "prompt_centres": prm_c,
        "queries": queries, "q_labels": q_labels,
    }


@pytest.fixture(scope="module")
def model_b(world) -> KnnPromptFusion:
    return KnnPromptFusion.from_embeddings(
        world["images"], world["prompts"], world["texts"], ids=[f"im{i}" for i in range(400)],
        model_id="clip-x", k=10,
    )


# -- numpy helpers --------------------------------------------------------------------------------
def test_ensemble_reference() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((5, P)), rng.standard_normal((5, P))
    np.testing.assert_allclose(ensemble(a, b, 1.0), unit(a), atol=1e-6)
    np.testing.assert_allclose(ensemble(a, b, 0.0), unit(b), atol=1e-6)
    mixed = ensemble(a, b, 0.3)
    np.testing.assert_allclose(mixed, unit(0.3 * a + 0.7 * b), atol=1e-6)
    per_row = ensemble(a, b, np.array([0.0, 1.0, 0.5, 0.5, 0.5]))
    np.testing.assert_allclose(per_row[0], unit(b[0]), atol=1e-6)
    np.testing.assert_allclose(per_row[1], unit(a[1]), atol=1e-6)
    with pytest.raises(InvalidInputError):
        ensemble(a, b, 1.5)
    with pytest.raises(ShapeError):
        ensemble(a, b[:3], 0.5)
    with pytest.raises(ShapeError):
        ensemble(a, b, np.ones(3) * 0.5)


def test_cosine_metrics() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[2.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(cosine_rows(a, b), [1.0, 0.0], atol=1e-6)
    assert mean_cosine(a, b) == pytest.approx(0.5)
    with pytest.raises(ShapeError):
        cosine_rows(a, b[:1])


def test_neighbour_weights() -> None:
    s = np.array([[0.9, 0.8, 0.5], [1.0, 0.2, 0.1]])
    inv = neighbour_weights(s, "inverse_distance", 0.1)
    np.testing.assert_allclose(inv.sum(axis=1), 1.0, atol=1e-6)
    assert inv[0, 0] > inv[0, 1] > inv[0, 2]
    np.testing.assert_allclose(inv[0, 0] / inv[0, 1], 0.2 / 0.1, rtol=1e-4)  # 1/d
    assert inv[1, 0] > 0.999  # an exact duplicate dominates
    sharp, soft = neighbour_weights(s, "softmax", 0.01), neighbour_weights(s, "softmax", 10.0)
    assert sharp[0, 0] > 0.99 and np.ptp(soft[0]) < 0.05
    np.testing.assert_allclose(neighbour_weights(s, "uniform", 1.0), 1 / 3, atol=1e-6)
    with pytest.raises(InvalidInputError):
        neighbour_weights(s, "softmax", 0.0)
    with pytest.raises(InvalidInputError):
        neighbour_weights(s, "nearest", 1.0)


# -- Model B --------------------------------------------------------------------------------------
@pytest.mark.parametrize("weighting", ["inverse_distance", "softmax", "uniform"])
def test_predict_recovers_the_cluster_prompt(model_b: KnnPromptFusion, world, weighting: str) -> None:
    before = model_b.settings
    model_b.settings = before.replace(weighting=weighting)
    try:
        pred = model_b.predict(world["queries"])
    finally:
        model_b.settings = before
    assert pred.shape == (30, P)
    np.testing.assert_allclose(np.linalg.norm(pred, axis=1), 1.0, atol=1e-5)
    target = world["prompt_centres"][world["q_labels"]]
    assert mean_cosine(pred, target) > 0.95


def test_predict_many_k_is_consistent_and_k1_copies_the_neighbour(model_b: KnnPromptFusion, world) -> None:
    q = world["queries"][:5]
    many = model_b.predict_many_k(q, [1, 5, 10])
    np.testing.assert_allclose(many[10], model_b.predict(q), atol=1e-6)
    np.testing.assert_allclose(many[5], model_b.predict(q, k=5), atol=1e-6)
    ids, _ = model_b.index.search_ids(q, 1)
    rows = [int(r[0][2:]) for r in ids]
    np.testing.assert_allclose(many[1], world["prompts"][rows], atol=1e-5)
    # K above the collection is capped, not an error
    assert model_b.predict(q, k=10_000).shape == (5, P)


def test_nearest_and_closest_prompts(model_b: KnnPromptFusion, world) -> None:
    q = world["queries"][[0, 3]]  # clusters 0 and 1
    near = model_b.nearest_prompts(q, n=3)
    # every image of a cluster shares one text, so distinct texts come from other clusters
    assert near[0][0][0] == "prompt of cluster 0" and near[1][0][0] == "prompt of cluster 1"
    assert len({t for t, _ in near[0]}) == len(near[0])
    assert near[0][0][1] >= near[0][-1][1]
    closest = model_b.closest_prompts(world["prompt_centres"][[4]], n=2)
    assert closest[0][0][0] == "prompt of cluster 4" and closest[0][0][1] > 0.9
    with pytest.raises(ShapeError):
        model_b.closest_prompts(np.ones((1, P + 1)))


def test_constructor_checks(world) -> None:
    idx = ImageIndex.from_embeddings(world["images"][:10], [f"a{i}" for i in range(10)])
    with pytest.raises(ShapeError):
        KnnPromptFusion(idx, world["prompts"][:9], world["texts"][:9])
    with pytest.raises(InvalidInputError):
        KnnPromptFusion(idx, world["prompts"][:10], world["texts"][:9])
    with pytest.raises(ArtifactError, match="not in the index"):
        KnnPromptFusion(idx, world["prompts"][:10], world["texts"][:10], ids=[f"b{i}" for i in range(10)])
    with pytest.raises(InvalidInputError):
        KnnPromptFusion(idx, world["prompts"][:10], world["texts"][:10], k=0)
    with pytest.raises(InvalidInputError):
        KnnPromptFusion(idx, world["prompts"][:10], world["texts"][:10], weighting="max")
    bad = world["prompts"][:10].copy()
    bad[2, 0] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        KnnPromptFusion(idx, bad, world["texts"][:10])


def test_save_load_round_trip(model_b: KnnPromptFusion, world, tmp_path: Path) -> None:
    model_b.save(tmp_path / "knn")
    assert {p.name for p in (tmp_path / "knn").iterdir()} == {"index", EMBEDS_NAME, CONFIG_NAME}
    back = KnnPromptFusion.load(tmp_path / "knn")
    np.testing.assert_allclose(back.predict(world["queries"]), model_b.predict(world["queries"]), atol=1e-6)
    assert back.prompt_texts == model_b.prompt_texts and back.k == 10 and back.index.model_id == "clip-x"
    # knn/ holds data only: the settings come from the caller (the manifest's record)
    cfg = json.loads((tmp_path / "knn" / CONFIG_NAME).read_text())
    assert not {"k", "alpha", "weighting", "temperature"} & set(cfg)
    again = KnnPromptFusion.load(tmp_path / "knn", settings=Img2PromptSettings(k=3, alpha=0.7, weighting="uniform"))
    assert (again.k, again.weighting, again.settings.alpha) == (3, "uniform", 0.7)
    q = world["queries"][:4]
    rows, _ = again._neighbours(q, 3)
    want = again.prompt_embeds[rows].mean(axis=1)  # uniform weights over K = 3
    np.testing.assert_allclose(again.predict(q), want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-6)
    # a schema-1 knn.json (settings inside) still loads; its settings are ignored
    (tmp_path / "knn" / CONFIG_NAME).write_text(json.dumps({**cfg, "schema_version": 1, "k": 1, "alpha": 0.9}))
    old = KnnPromptFusion.load(tmp_path / "knn")
    assert old.settings == Img2PromptSettings()
    with pytest.raises(ArtifactError, match="clip-x"):
        KnnPromptFusion.load(tmp_path / "knn", encoder=type("E", (), {"dim": D, "model_id": "clip-y"})())


def test_load_refuses_corrupt_files(model_b: KnnPromptFusion, tmp_path: Path) -> None:
    root = model_b.save(tmp_path / "knn")
    emb = (root / EMBEDS_NAME).read_bytes()
    (root / EMBEDS_NAME).write_bytes(emb[:-16])
    with pytest.raises(IndexCorruptError, match="sha256"):
        KnnPromptFusion.load(root)
    with pytest.raises(IndexCorruptError, match="cannot read"):
        KnnPromptFusion.load(root, verify=False)
    (root / EMBEDS_NAME).write_bytes(emb)
    cfg = json.loads((root / CONFIG_NAME).read_text())
    (root / CONFIG_NAME).write_text(json.dumps({**cfg, "ids": cfg["ids"][:-1], "prompts": cfg["prompts"][:-1]}))
    with pytest.raises(IndexCorruptError, match="inconsistent"):
        KnnPromptFusion.load(root)
    (root / CONFIG_NAME).write_text("{")
    with pytest.raises(IndexCorruptError):
        KnnPromptFusion.load(root)
    with pytest.raises(IndexCorruptError, match="missing"):
        KnnPromptFusion.load(tmp_path / "empty")


# -- the settings record -------------------------------------------------------------------------
def test_settings_record_validates_once_and_round_trips_through_the_manifest(tmp_path: Path) -> None:
    from clipq.runtime.manifest import Manifest

    s = Img2PromptSettings(alpha=0.3, k=5, weighting="softmax", temperature=0.1)
    assert s.to_dict() == {"alpha": 0.3, "k": 5, "weighting": "softmax", "temperature": 0.1}
    assert Img2PromptSettings.from_dict(s.to_dict()) == s
    assert s.replace(k=7, alpha=None) == Img2PromptSettings(alpha=0.3, k=7, weighting="softmax", temperature=0.1)
    for bad in ({"alpha": 1.5}, {"alpha": -0.1}, {"alpha": float("nan")}, {"alpha": "x"}, {"k": 0},
                {"k": 2.5}, {"weighting": "max"}, {"weighting": "softmax", "temperature": 0.0}):
        with pytest.raises(InvalidInputError):
            Img2PromptSettings(**bad)
        with pytest.raises(ArtifactError, match="settings are invalid"):  # a stored record: the artifact is bad
            Img2PromptSettings.from_dict(bad)
    with pytest.raises(InvalidInputError, match="alpha"):
        check_alpha([0.2, 1.01])
    m = Manifest(root=tmp_path)
    assert Img2PromptSettings.from_manifest(m) == Img2PromptSettings()  # no record: the defaults
    s.store(m)
    m.save()
    assert Img2PromptSettings.from_manifest(Manifest.load(tmp_path)) == s
    # a record written before temperature was stored keeps the default for it
    m.extra["img2prompt"] = {"alpha": 0.6, "k": 3, "weighting": "inverse_distance"}
    assert Img2PromptSettings.from_manifest(m) == Img2PromptSettings(alpha=0.6, k=3)


def test_describe_embeds_reports_the_fused_embedding_and_known_prompts(model_b: KnnPromptFusion, world) -> None:
    q, centres, labels = world["queries"], world["prompt_centres"], world["q_labels"]
    rows = [0, 6]
    a, b = centres[labels[rows]], model_b.predict(q[rows])
    out = describe_embeds(model_b, q[rows], ensemble(a, b, 0.5), 0.5, 2)
    assert len(out) == 2 and out[0].embedding.shape == (P,) and out[0].alpha == 0.5 and out[0].k == model_b.k
    assert out[0].closest[0][0] == "prompt of cluster 0" and out[1].closest[0][0] == "prompt of cluster 2"
    assert out[1].neighbours[0][0] == "prompt of cluster 2"
    same = describe_embeds(model_b, q[rows], ensemble(a, b, 1.0), [1.0, 1.0], [1, 2])
    np.testing.assert_allclose(same[0].embedding, unit(centres[0]), atol=1e-6)  # alpha=1: Model A alone
    assert len(same[0].closest) == 1 and 1 <= len(same[1].closest) <= 2  # n per row (repeated prompts listed once)
    assert json.loads(json.dumps(out[0].to_dict()))["k"] == model_b.k


# -- sweep ----------------------------------------------------------------------------------------
def test_sweep_finds_an_ensemble_better_than_either_model(model_b: KnnPromptFusion, world) -> None:
    rng = np.random.default_rng(3)
    targets = world["prompt_centres"][world["q_labels"]]
    # Model A: right on average but noisy, with errors independent of Model B's
    a_val = unit(targets + 0.35 * rng.standard_normal(targets.shape))
    b_by_k = model_b.predict_many_k(world["queries"], [1, 5, 10])
    b_noisy = {k: unit(v + 0.35 * rng.standard_normal(v.shape)) for k, v in b_by_k.items()}
    table = sweep(a_val, b_noisy, targets, alphas=[0.0, 0.25, 0.5, 0.75, 1.0])
    assert len(table.rows) == 15 and table.ks == [1, 5, 10]
    best = table.best
    assert 0.0 < best.alpha < 1.0
    assert best.score > table.model_a() and best.score > max(table.model_b().values())
    assert table.score(1.0, 5) == pytest.approx(mean_cosine(a_val, targets), abs=1e-6)
    md = table.to_markdown()
    assert md.count("\n") == 4 and f"**{best.score:.4f}**" in md
    assert json.loads(json.dumps(table.to_dict()))["best"]["k"] == best.k
    # a function of K works the same way
    by_fn = sweep(a_val, b_noisy.__getitem__, targets, alphas=[0.5], ks=[5])
    assert by_fn.score(0.5, 5) == pytest.approx(table.score(0.5, 5))


def test_sweep_input_checks() -> None:
    a = unit(np.ones((4, P)))
    with pytest.raises(ShapeError):
        sweep(a, {1: a[:2]}, a)
    with pytest.raises(ShapeError):
        sweep(a, {1: a}, a[:2])
    with pytest.raises(InvalidInputError):
        sweep(a, a, a, ks=[1, 2])
    with pytest.raises(InvalidInputError):
        sweep(a, {1: a}, a, alphas=[2.0])
