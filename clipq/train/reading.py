"""Can CLIP read? Zero-shot scoring of (image, question + candidate answer), and a short fine-tune.

Zero-shot: the answer is the candidate whose text "question + answer" CLIP scores highest against the
image. Fine-tuning: CLIP is trained to pick the right candidate among all of them (cross-entropy over
image-text similarities), which is the same scoring rule with the candidate list as the classes.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from clipq.models.export_wrappers import ClipImageTower, ClipTextTower
from clipq.models.io import load_clip, load_tokenizer, save_clip, tokenize
from clipq.runtime.manifest import Manifest
from clipq.runtime.metrics import accuracy

from .common import seed_everything, set_threads
from .data import load_split, load_word_images


@dataclass(frozen=True, kw_only=True)
class ReadingConfig:
    steps: int = 150
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0


@torch.inference_mode()
def score_candidates(clip, tok, pixels: torch.Tensor, questions: list[str], candidates: list[str]) -> np.ndarray:
    """Predicted candidate index per image: argmax_c sim(image, question + " " + c).

    Questions come from a few templates, so the candidate texts are embedded once per distinct
    question and every image is scored in batches.
    """
    img = ClipImageTower(clip).eval()
    txt = ClipTextTower(clip).eval()
    v = torch.cat([img(pixels[i : i + 256]) for i in range(0, len(pixels), 256)])  # [N, D]
    by_question = {q: txt(*tokenize(tok, [f"{q} {c}" for c in candidates])) for q in set(questions)}  # [C, D]
    return np.array([int((v[i] @ by_question[q].T).argmax()) for i, q in enumerate(questions)])


def train_reading(data: str, artifacts: str, *, cfg: ReadingConfig | None = None, threads: int | None = None,
                  progress: bool = True) -> dict:
    """Zero-shot vs fine-tuned reading accuracy (%) on the test words; saves ``checkpoints/clip_reading``."""
    cfg = cfg or ReadingConfig()
    set_threads(threads)
    seed_everything(cfg.seed)
    m = Manifest.load(artifacts)
    size = m.preprocessing["size"]
    tr, te = load_split(data, "train", size), load_split(data, "test", size)
    if not tr.words or not te.words:
        return {"skipped": "no word images in the data"}
    tok = load_tokenizer(m, "clip")
    candidates = sorted({r.answers[0] for r in tr.words} | {r.answers[0] for r in te.words})
    c2i = {c: i for i, c in enumerate(candidates)}
    px_tr = load_word_images(data, tr.words, size)
    px_te = load_word_images(data, te.words, size)
    y_te = np.array([c2i[r.answers[0]] for r in te.words])
    q_te = [r.question for r in te.words]
    clip = load_clip(m).eval()
    t0 = time.perf_counter()
    zero = accuracy(score_candidates(clip, tok, px_te, q_te, candidates), y_te)

    model = copy.deepcopy(clip).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    rng = np.random.default_rng(cfg.seed)
    y_tr = torch.tensor([c2i[r.answers[0]] for r in tr.words])
    img, txt = ClipImageTower(model), ClipTextTower(model)
    losses: list[float] = []
    for _ in tqdm(range(cfg.steps), desc="train reading", disable=not progress, mininterval=1.0):
        idx = rng.choice(len(tr.words), size=min(cfg.batch_size, len(tr.words)), replace=False)
        q = tr.words[int(idx[0])].question  # one question phrasing per step, every candidate
        ids, mask = tokenize(tok, [f"{q} {c}" for c in candidates])
        logits = model.logit_scale.exp() * img(px_tr[idx]) @ txt(ids, mask).T  # [B, C]
        loss = F.cross_entropy(logits, y_tr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    tuned = accuracy(score_candidates(model, tok, px_te, q_te, candidates), y_te)
    save_clip(m, model, "clip_reading")
    out = {
        "zero_shot": zero, "fine_tuned": tuned, "chance": 100.0 / len(candidates), "candidates": len(candidates),
        "test_items": len(te.words), "seconds": round(time.perf_counter() - t0, 1), "steps": cfg.steps,
        "loss_first": round(float(np.mean(losses[:10])), 4) if losses else None,
        "loss_last": round(float(np.mean(losses[-10:])), 4) if losses else None,
    }
    m.metrics["reading"] = out
    m.save()
    return out
