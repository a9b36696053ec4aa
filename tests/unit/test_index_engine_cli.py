"""``clipq index build --engine/--memory-budget`` and the build's recall self-check in ``index info``.

Real faiss and hnswlib; the embeddings come from a hand-written ``clipq embed`` directory (one shard).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _require import require_module

from clipq.app.batch_embed import SHARD_DIR, SUMMARY
from clipq.app.cli import main
from clipq.runtime.index import SIDECAR_NAME, ImageIndex
from clipq.runtime.index.engines import choose_engine
from clipq.runtime.manifest import sha256_file

require_module("faiss")


def embed_dir(root: Path, n: int = 2500, dim: int = 32) -> Path:
    """A finished `clipq embed` output of ``n`` clustered unit vectors."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((25, dim))
    x = centres[rng.integers(0, 25, n)] + rng.standard_normal((n, dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    (root / SHARD_DIR).mkdir(parents=True)
    stem = root / SHARD_DIR / "shard-00000"
    np.save(f"{stem}.npy", x)
    Path(f"{stem}.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "path": f"p{i}.jpg"}) + "\n" for i in range(n)))
    sha = {s: sha256_file(Path(f"{stem}{s}")) for s in (".npy", ".jsonl")}
    Path(f"{stem}.json").write_text(json.dumps({"count": n, "sha256": sha}))
    (root / SUMMARY).write_text(json.dumps({"shards": 1, "model_id": "test-model"}))
    return root


@pytest.mark.parametrize(("flags", "engine"), [
    (["--engine", "sq4"], "sq4"),
    (["--engine", "ivfpq", "--nprobe", "16", "--rescore", "100"], "ivfpq"),
    (["--memory-budget", "1G"], "hnswlib"),  # auto: the floats fit
    (["--memory-budget", "1M"], choose_engine(2500, 32, memory_budget=1 << 20)),  # auto: the floats do not fit
])
def test_build_with_an_engine_records_it_and_its_recall(flags, engine, tmp_path, capsys):
    if flags[-1] == "1M":
        assert engine != "hnswlib"
    emb = embed_dir(tmp_path / "emb")
    assert main(["index", "build", "--from-embeddings", str(emb), "-o", str(tmp_path / "idx"), "--json", *flags]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["engine"]["name"] == engine and out["count"] == 2500
    side = json.loads((tmp_path / "idx" / SIDECAR_NAME).read_text())
    assert side["build_recall"]["engine"] == engine and side["build_recall"]["recall"] >= 0.85
    assert ImageIndex.load(tmp_path / "idx").engine == engine
    assert main(["index", "info", str(tmp_path / "idx")]) == 0
    text = capsys.readouterr().out
    assert f"engine {engine}" in text and "build recall@10" in text
    if engine == "ivfpq":
        assert side["engine"]["nprobe"] == 16 and side["engine"]["rescore"] == 100


def test_bad_engine_options_are_refused(tmp_path, capsys):
    emb = embed_dir(tmp_path / "emb", n=50)
    assert main(["index", "build", "--from-embeddings", str(emb), "-o", str(tmp_path / "i"), "--memory-budget", "lots"]) == 2
    assert "memory size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["index", "build", "--from-embeddings", str(emb), "-o", str(tmp_path / "i"), "--engine", "annoy"])
