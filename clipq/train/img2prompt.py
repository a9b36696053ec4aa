"""Image -> prompt embedding (seed 2401.06167): Model A, Model B (KNN) and their ensemble.

Targets are real all-MiniLM-L6-v2 sentence embeddings of the prompts (mean pooling, normalised).
Training pairs whose CLIP image-prompt cosine falls below ``filter_threshold`` are dropped, as in the
paper, where noisy scraped pairs hurt; the share dropped is reported.
Model A: the trained CLIP vision tower + FC1/LN/FC2/LN head, a small LR on the tower and a larger one
on the head, cosine loss. Model B: KNN over CLIP image embeddings of the training images (HNSW, in the
runtime), distance-weighted mean of the neighbours' prompt embeddings. alpha and K are tuned on val.
"""

from __future__ import annotations

import copy
import shutil
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from clipq.models.export_wrappers import ClipImageTower
from clipq.models.img2prompt import PromptRegressorA
from clipq.models.io import load_clip, load_tokenizer, save_img2prompt, tokenize
from clipq.models.prompt_encoder import SentenceEncoder
from clipq.runtime.errors import DataFormatError
from clipq.runtime.manifest import Manifest
from clipq.runtime.metrics import mean_cosine

from .common import batched, cosine_with_warmup, encode_texts, seed_everything, set_threads
from .data import load_split

ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
KS = (1, 3, 5, 10, 20, 50)


@dataclass(frozen=True, kw_only=True)
class Img2PromptConfig:
    epochs: int = 4
    batch_size: int = 128
    backbone_lr: float = 1e-4
    head_lr: float = 1e-3
    filter_threshold: float | None = 0.0  # CLIP image-prompt cosine; None disables filtering
    knn_weighting: str = "inverse_distance"
    seed: int = 0


@torch.inference_mode()
def prompt_embeddings(m: Manifest, prompts: list[str], encoder: SentenceEncoder | None = None) -> torch.Tensor:
    enc = encoder or SentenceEncoder.pretrained()
    tok = load_tokenizer(m, "prompt")
    out = []
    for i in range(0, len(prompts), 256):
        ids, mask = tokenize(tok, prompts[i : i + 256])
        out.append(enc(ids, mask))
    return torch.cat(out)


def _require_prompts(split) -> list[str]:
    missing = [i for i, p in zip(split.image_ids, split.prompts) if not p]
    if missing:
        raise DataFormatError(f"{len(missing)} {split.name} images have no prompt (first: {missing[0]})")
    return list(split.prompts)


def train_img2prompt(data: str, artifacts: str, *, cfg: Img2PromptConfig | None = None,
                     threads: int | None = None, progress: bool = True) -> dict:
    """Train Model A, build Model B's KNN store in ``knn/``, sweep alpha and K on val, score test."""
    cfg = cfg or Img2PromptConfig()
    set_threads(threads)
    seed_everything(cfg.seed)
    m = Manifest.load(artifacts)
    size = m.preprocessing["size"]
    tr, va, te = (load_split(data, s, size) for s in ("train", "val", "test"))
    p_tr, p_va, p_te = _require_prompts(tr), _require_prompts(va), _require_prompts(te)
    t0 = time.perf_counter()
    encoder = SentenceEncoder.pretrained()
    y_tr, y_va, y_te = (prompt_embeddings(m, p, encoder) for p in (p_tr, p_va, p_te))
    clip = load_clip(m).eval()
    img_tower = ClipImageTower(clip).eval()
    e_tr, e_va, e_te = (batched(img_tower, s.pixels) for s in (tr, va, te))

    keep = np.arange(len(p_tr))
    if cfg.filter_threshold is not None:  # cosine filtering of training pairs (CLIP image vs prompt)
        sims = (e_tr.numpy() * encode_texts(clip, load_tokenizer(m, "clip"), p_tr)).sum(-1)
        keep = np.flatnonzero(sims >= cfg.filter_threshold)
        if len(keep) < 0.2 * len(p_tr):  # a threshold that leaves too little data is a setting error
            keep = np.argsort(-sims)[: max(1, int(0.2 * len(p_tr)))]
    filt = {"threshold": cfg.filter_threshold, "kept": int(len(keep)), "total": len(p_tr)}

    # Model A: a copy of the trained CLIP tower (CLIP itself stays as trained for the other tasks)
    model = PromptRegressorA(copy.deepcopy(clip))
    opt = torch.optim.AdamW(
        [{"params": model.backbone_parameters(), "lr": cfg.backbone_lr},
         {"params": model.head.parameters(), "lr": cfg.head_lr}],
        weight_decay=0.01,
    )
    steps_per_epoch = max(1, int(np.ceil(len(keep) / cfg.batch_size)))
    sched = cosine_with_warmup(opt, cfg.epochs * steps_per_epoch, warmup=max(1, steps_per_epoch // 4))
    rng = np.random.default_rng(cfg.seed)
    model.train()
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc="train img2prompt A", disable=not progress, mininterval=1.0)
    for _ in range(cfg.epochs):
        order = rng.permutation(keep)
        for i in range(0, len(order), cfg.batch_size):
            idx = torch.from_numpy(order[i : i + cfg.batch_size])
            pred = model(tr.pixels[idx])
            loss = (1 - (pred * y_tr[idx]).sum(-1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    model.eval()
    save_img2prompt(m, model)
    a_va = batched(model, va.pixels).numpy()
    a_te = batched(model, te.pixels).numpy()

    # Model B on the runtime's HNSW index, built from the training images (all pairs: B only looks up)
    from clipq.runtime.fusion import KnnPromptFusion, ensemble
    from clipq.runtime.sweep import sweep

    fusion = KnnPromptFusion.from_embeddings(
        e_tr.numpy(), y_tr.numpy(), p_tr, ids=list(tr.image_ids), model_id=m.extra.get("clip_model_id"),
        k=10, weighting=cfg.knn_weighting,
    )
    table = sweep(a_va, fusion.predict_many_k(e_va.numpy(), KS), y_va.numpy(), ALPHAS)
    best = table.best
    fusion.k, fusion.alpha = best.k, best.alpha
    knn_dir = m.root / "knn"
    if knn_dir.exists():
        shutil.rmtree(knn_dir)
    fusion.save(knn_dir)
    m.add_tree("knn")
    b_te = fusion.predict(e_te.numpy())
    y = y_te.numpy()
    result = {
        "A": mean_cosine(a_te, y), "B": mean_cosine(b_te, y),
        "ensemble": mean_cosine(ensemble(a_te, b_te, best.alpha), y),
        "alpha": best.alpha, "k": best.k, "filter": filt, "sweep_val": table.to_dict(),
        "sweep_val_markdown": table.to_markdown(), "seconds": round(time.perf_counter() - t0, 1),
    }
    m.extra["img2prompt"] = {"alpha": best.alpha, "k": best.k, "weighting": cfg.knn_weighting}
    m.metrics["img2prompt"] = result
    m.save()
    return result
