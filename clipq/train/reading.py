"""Can CLIP read? Zero-shot scoring of (image, question + candidate answer), fine-tunes, and the seed's rows.

Zero-shot: the answer is the candidate whose text "question + answer" CLIP scores highest against the
image. Fine-tuning is CLIP's own contrastive loss on (word image, "question + its word") pairs, with
batches of distinct words (so no batch holds a false negative), lr 3e-5 with warm-up: the earlier
fine-tune (40-way cross-entropy on every parameter at lr 1e-3, no warm-up) collapsed in its first steps
to equal text embeddings for all candidates and then sat at ln 40 (loss 3.71 -> 3.67). Rows, as in the
seed's Table 2 plus its two proposed directions:

* ``naive``: random batches;
* ``hard_images``: half of each batch from one k-means cluster of the current image embeddings
  (word images that look alike: font, colours, plate);
* ``hard_texts``: half of each batch from one cluster of the current text embeddings of the answers
  (words CLIP finds alike);
* ``hard_both``: a quarter from each;
* ``synthetic``: naive batches from a larger synthetic-word set (``clipq.world.render_word``,
  never the world's own images) instead of the training word images;
* ``synthetic_ce``: the remedy that reads: a large synthetic-word set (``ce_synthetic_factor`` times the
  training word images) and a 40-way cross-entropy of each image against *every* candidate, in two
  stages (``fine_tune_candidates``). First the image tower learns against one anchor vector per
  candidate, initialised from the text tower's own embeddings of the candidates (the zero-shot
  classifier, as a linear probe then fine-tune starts from it); then the text tower is taught the
  anchors (cosine regression of "question + candidate" onto the candidate's anchor, for every
  question), so the model that is saved and served is a plain CLIP scoring (image, question + answer).
  The candidate words never occur in CLIP's shape captions, so the text tower embeds them alike;
  training it jointly with the images (one stage) learnt slowly and was unstable (docs/training.md);
* ``crops``: any model scored over crops of the image as well (max over crops per candidate).

The fine-tuned row with the best val accuracy is saved as ``checkpoints/clip_reading``; its candidate
list and question rule go into ``manifest.extra["reading"]``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from clipq.models.export_wrappers import ClipImageTower, ClipTextTower
from clipq.models.io import load_clip, load_tokenizer, save_clip, tokenize
from clipq.runtime.manifest import Manifest
from clipq.runtime.metrics import accuracy

from .clip import clip_loss
from .common import (
    autocast,
    channels_last,
    contrastive_step,
    cosine_with_warmup,
    optimizer_step,
    resolve_precision,
    seed_everything,
    set_threads,
    to_pixel_values,
)
from .data import load_split, load_word_images
from .negatives import kmeans

ROWS = ("naive", "hard_images", "hard_texts", "hard_both", "synthetic", "synthetic_ce")
LIST_SIZES = (2, 5, 10, 20, 40)


@dataclass(frozen=True, kw_only=True)
class ReadingConfig:
    steps: int = 300
    batch_size: int = 16  # distinct words per batch
    lr: float = 3e-5
    warmup: int = 20
    weight_decay: float = 0.01
    recluster_every: int = 50
    rows: tuple[str, ...] = ROWS
    synthetic_factor: float = 3.0  # the synthetic-word set holds this many times the training word images
    crop: float = 0.75  # crop side as a share of the image side (3 x 3 crops + the full image)
    # synthetic_ce (cross-entropy over every candidate, two stages): measured on 2 cores, 800 image steps +
    # 200 text steps on 14,850 word images reached 84.7 % in 60 s (500 image steps: 57-63 %), where the
    # one-stage joint fine-tune reached 19.3 % in 117 s (docs/training.md#reading)
    ce_steps: int = 800  # stage 1: image tower + candidate anchors
    ce_batch_size: int = 64
    ce_lr: float = 1e-3  # image tower
    ce_anchor_lr: float = 1e-2  # the candidate anchors
    ce_warmup: int = 50
    ce_scale: float = 50.0  # fixed logit scale of the cross-entropy
    ce_text_steps: int = 200  # stage 2: the text tower regresses onto the anchors
    ce_text_lr: float = 1e-3  # text transformer and projection
    ce_embed_lr: float = 1e-2  # token embeddings: the candidate words are new tokens to the text tower
    ce_text_questions: int = 2  # questions (x every candidate) per stage-2 step
    ce_synthetic_factor: float = 15.0
    precision: str = "auto"
    seed: int = 0


@torch.inference_mode()
def candidate_scores(clip, tok, pixels: torch.Tensor, questions: list[str], candidates: list[str],
                     crops: float | None = None, precision: str = "fp32") -> np.ndarray:
    """sim(image, question + " " + candidate) [N, C]; with ``crops``, the max over the image and its crops.

    Questions come from a few templates, so the candidate texts are embedded once per distinct question.
    """
    img = ClipImageTower(clip).eval()
    txt = ClipTextTower(clip).eval()
    with autocast(precision):
        by_question = {q: txt(*tokenize(tok, [f"{q} {c}" for c in candidates])).float()
                       for q in sorted(set(questions))}  # [C, D]
        views = [pixels] + (_crops(pixels, crops) if crops else [])
        v = torch.stack([torch.cat([img(x[i : i + 256]).float() for i in range(0, len(x), 256)])
                         for x in views])  # [V, N, D]
    out = np.zeros((len(pixels), len(candidates)), dtype=np.float32)
    for q, t in by_question.items():
        rows = [i for i, qq in enumerate(questions) if qq == q]
        out[rows] = (v[:, rows] @ t.T).amax(0).float().numpy()
    return out


def score_candidates(clip, tok, pixels: torch.Tensor, questions: list[str], candidates: list[str],
                     crops: float | None = None, precision: str = "fp32") -> np.ndarray:
    """Predicted candidate index per image: argmax_c sim(image, question + " " + c)."""
    return candidate_scores(clip, tok, pixels, questions, candidates, crops, precision).argmax(1)


def _crops(pixels: torch.Tensor, share: float) -> list[torch.Tensor]:
    """3 x 3 overlapping crops of side ``share`` * S, each resized back to S (bilinear)."""
    s = pixels.shape[-1]
    c = max(8, int(round(s * share)))
    starts = sorted({0, (s - c) // 2, s - c})
    return [F.interpolate(pixels[..., y : y + c, x : x + c], size=(s, s), mode="bilinear", align_corners=False)
            for y in starts for x in starts]


def list_size_accuracy(scores: np.ndarray, y: np.ndarray, sizes=LIST_SIZES, seed: int = 0) -> dict[int, float]:
    """Accuracy (%) when each image's list is its answer plus ``k - 1`` random other candidates."""
    rng = np.random.default_rng(seed)
    n, c = scores.shape
    out = {}
    for k in sizes:
        if k > c:
            continue
        hit = []
        for i in range(n):
            others = rng.choice(np.setdiff1d(np.arange(c), [y[i]]), size=k - 1, replace=False)
            hit.append(scores[i, y[i]] > scores[i, others].max(initial=-np.inf))
        out[k] = float(np.mean(hit) * 100)
    return out


def _synthetic_set(seed: int, n: int, words: list[str], size: int) -> tuple[torch.Tensor, list[str], list[str]]:
    from clipq.world import render_words

    arr, w, q = render_words(seed, n, words, size)  # in worker processes: 13,500 images, 2 cores
    return to_pixel_values(arr, size), w, q


def _distinct_words(order, words: np.ndarray, want: int, taken: set) -> list[int]:
    out = []
    for i in order:
        if len(out) >= want:
            break
        if words[i] not in taken:
            taken.add(words[i])
            out.append(int(i))
    return out


def fine_tune(clip, tok, pixels: torch.Tensor, words: list[str], questions: list[str], candidates: list[str],
              mining: str, cfg: ReadingConfig, precision: str, progress: bool = False) -> tuple[torch.nn.Module, list]:
    """Contrastive fine-tune of a copy of ``clip`` on (image, question + word); returns it and its losses."""
    model = copy.deepcopy(clip).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=cfg.lr, fused=True)
    sched = cosine_with_warmup(opt, cfg.steps, cfg.warmup)
    rng = np.random.default_rng(cfg.seed)
    w = np.asarray(words)
    by_word = {c: np.flatnonzero(w == c) for c in candidates}
    bs = min(cfg.batch_size, len(set(words)))
    img_tower, txt_tower = ClipImageTower(model), ClipTextTower(model)
    img_groups: list[np.ndarray] = []
    txt_groups: list[list[str]] = []
    losses: list[float] = []
    for step in tqdm(range(cfg.steps), desc=f"reading {mining}", disable=not progress, mininterval=1.0):
        if mining != "naive" and step % cfg.recluster_every == 0:
            img_groups, txt_groups = _mining_groups(model, tok, pixels, questions, candidates, mining, bs, step, precision)
        taken: set = set()
        idx: list[int] = []
        if img_groups:
            g = img_groups[rng.integers(len(img_groups))]
            idx += _distinct_words(rng.permutation(g), w, bs // (4 if mining == "hard_both" else 2), taken)
        if txt_groups:
            g = [c for c in txt_groups[rng.integers(len(txt_groups))] if c not in taken]
            for c in g[: bs // (4 if mining == "hard_both" else 2)]:
                if len(by_word[c]):
                    taken.add(c)
                    idx.append(int(rng.choice(by_word[c])))
        idx += _distinct_words(rng.permutation(len(w)), w, bs - len(idx), taken)
        ids, mask = tokenize(tok, [f"{questions[i]} {words[i]}" for i in idx])
        with autocast(precision):
            v = img_tower(pixels[idx])
            t = txt_tower(ids, mask)
        loss = clip_loss(v, t, model.logit_scale.exp())
        contrastive_step(opt, sched, loss, model)
        losses.append(loss.item())
    return model.eval(), losses


def fine_tune_candidates(clip, tok, pixels: torch.Tensor, words: list[str], questions: list[str],
                         candidates: list[str], cfg: ReadingConfig, precision: str,
                         progress: bool = False) -> tuple[torch.nn.Module, dict[str, list[float]]]:
    """Cross-entropy of each image over every candidate, in two stages; returns the model and both loss curves.

    1. ``ce_steps``: the image tower (lr ``ce_lr``) and one anchor per candidate (lr ``ce_anchor_lr``),
       initialised from the text tower's embeddings of "question + candidate" averaged over the
       questions; logits ``ce_scale * cos(image, anchor)``.
    2. ``ce_text_steps``: the text tower alone (``ce_text_lr``, token embeddings ``ce_embed_lr``)
       learns ``1 - cos(text("question + c"), anchor_c)`` for ``ce_text_questions`` random questions
       x every candidate per step, so the anchors end up in the text tower and the saved model is a
       plain CLIP.

    Returns:
        (model, {"image": stage-1 cross-entropies, "text": stage-2 cosine losses}).
    """
    model = copy.deepcopy(clip).train()
    img_tower, txt_tower = ClipImageTower(model), ClipTextTower(model)
    qset = sorted(set(questions))
    texts = {q: tokenize(tok, [f"{q} {c}" for c in candidates]) for q in qset}  # every candidate, per question
    with torch.no_grad():  # fp32: a one-off forward, and the start it gives matters (docs/training.md#reading)
        init = torch.stack([txt_tower(*texts[q]).float() for q in qset]).mean(0)
    anchors = torch.nn.Parameter(F.normalize(init, dim=-1))
    vision = [p for n, p in model.named_parameters() if n.startswith(("vision_model.", "visual_projection."))]
    opt = torch.optim.AdamW([{"params": vision, "lr": cfg.ce_lr, "weight_decay": cfg.weight_decay},
                             {"params": [anchors], "lr": cfg.ce_anchor_lr, "weight_decay": 0.0}], fused=True)
    sched = cosine_with_warmup(opt, cfg.ce_steps, cfg.ce_warmup)
    c2i = {c: i for i, c in enumerate(candidates)}
    y = torch.tensor([c2i[w] for w in words])
    rng = np.random.default_rng(cfg.seed)
    bs = min(cfg.ce_batch_size, len(words))
    curves: dict[str, list[float]] = {"image": [], "text": []}
    for _ in tqdm(range(cfg.ce_steps), desc="reading synthetic_ce: image", disable=not progress, mininterval=1.0):
        idx = rng.choice(len(words), size=bs, replace=False)
        with autocast(precision):
            v = img_tower(pixels[idx]).float()  # [B, D], L2-normalised
        loss = F.cross_entropy(cfg.ce_scale * v @ F.normalize(anchors, dim=-1).T, y[idx])
        optimizer_step(opt, sched, loss, clip=vision)  # the anchors' steps are Adam's own, unclipped
        curves["image"].append(loss.item())
    target = F.normalize(anchors.detach(), dim=-1)
    text = [p for n, p in model.named_parameters() if n.startswith(("text_model.", "text_projection."))
            and "token_embedding" not in n]
    embed = [p for n, p in model.named_parameters() if "token_embedding" in n]
    opt = torch.optim.AdamW([{"params": text, "lr": cfg.ce_text_lr, "weight_decay": cfg.weight_decay},
                             {"params": embed, "lr": cfg.ce_embed_lr, "weight_decay": 0.0}], fused=True)
    sched = cosine_with_warmup(opt, cfg.ce_text_steps, min(10, cfg.ce_text_steps // 10))
    n_q = min(cfg.ce_text_questions, len(qset))
    for _ in tqdm(range(cfg.ce_text_steps), desc="reading synthetic_ce: text", disable=not progress, mininterval=1.0):
        qs = [qset[i] for i in rng.choice(len(qset), size=n_q, replace=False)]
        with autocast(precision):
            t = torch.cat([txt_tower(*texts[q]).float() for q in qs])
        loss = (1 - (t * target.repeat(n_q, 1)).sum(-1)).mean()
        optimizer_step(opt, sched, loss)
        curves["text"].append(loss.item())
    return model.eval(), curves


@torch.inference_mode()
def _mining_groups(model, tok, pixels, questions, candidates, mining: str, bs: int, step: int,
                   precision: str) -> tuple[list[np.ndarray], list[list[str]]]:
    img_groups: list[np.ndarray] = []
    txt_groups: list[list[str]] = []
    was = model.training
    model.eval()
    if mining in ("hard_images", "hard_both"):
        with autocast(precision):
            v = torch.cat([ClipImageTower(model)(pixels[i : i + 256]).float() for i in range(0, len(pixels), 256)])
        labels = kmeans(v, max(2, len(pixels) // (4 * bs)), seed=step).numpy()
        img_groups = [np.flatnonzero(labels == j) for j in np.unique(labels) if (labels == j).sum() >= 4]
    if mining in ("hard_texts", "hard_both"):
        with autocast(precision):
            t = ClipTextTower(model)(*tokenize(tok, [f"{questions[0]} {c}" for c in candidates])).float()
        labels = kmeans(t, max(2, len(candidates) // max(2, bs // 2)), seed=step).numpy()
        txt_groups = [[candidates[i] for i in np.flatnonzero(labels == j)] for j in np.unique(labels)]
        txt_groups = [g for g in txt_groups if len(g) >= 2]
    model.train(was)
    return img_groups, txt_groups


def train_reading(data: str, artifacts: str, *, cfg: ReadingConfig | None = None, threads: int | None = None,
                  progress: bool = True) -> dict:
    """Zero-shot, fine-tuned rows and crops on the test words (accuracy %); saves ``checkpoints/clip_reading``."""
    cfg = cfg or ReadingConfig()
    set_threads(threads)
    seed_everything(cfg.seed)
    precision = resolve_precision(cfg.precision)
    m = Manifest.load(artifacts)
    size = m.preprocessing["size"]
    tr, te = load_split(data, "train", size), load_split(data, "test", size)
    if not tr.words or not te.words:
        return {"skipped": "no word images in the data"}
    va = load_split(data, "val", size)
    tok = load_tokenizer(m, "clip")
    candidates = sorted({r.answers[0] for r in tr.words} | {r.answers[0] for r in te.words})
    c2i = {c: i for i, c in enumerate(candidates)}
    px_tr = load_word_images(data, tr.words, size)
    px_te = load_word_images(data, te.words, size)
    y_te = np.array([c2i[r.answers[0]] for r in te.words])
    q_te = [r.question for r in te.words]
    have_val = bool(va.words) and all(r.answers[0] in c2i for r in va.words)
    px_va = load_word_images(data, va.words, size) if have_val else None
    y_va = np.array([c2i[r.answers[0]] for r in va.words]) if have_val else None
    clip = channels_last(load_clip(m).eval())
    t0 = time.perf_counter()

    def score(model, crops: float | None = None) -> dict:
        s_te = candidate_scores(model, tok, px_te, q_te, candidates, crops, precision)
        out = {"test": accuracy(s_te.argmax(1), y_te), "by_list_size": list_size_accuracy(s_te, y_te)}
        if have_val:
            out["val"] = accuracy(score_candidates(model, tok, px_va, [r.question for r in va.words], candidates,
                                                   crops, precision), y_va)
        return out

    rows: dict[str, dict] = {"zero_shot": score(clip)}
    tuned: dict[str, torch.nn.Module] = {}
    train_words = [r.answers[0] for r in tr.words]
    train_q = [r.question for r in tr.words]
    # the synthetic words are drawn once, as many as the larger row needs: image i of the set depends
    # only on (seed, i), so the smaller row's set is the first images of the larger one's
    n_need = {"synthetic": int(round(cfg.synthetic_factor * len(tr.words))),
              "synthetic_ce": int(round(cfg.ce_synthetic_factor * len(tr.words))) if cfg.ce_steps > 0 else 0}
    drawn: list = []
    draw_s: list[float] = []  # the synthetic words' drawing time (a fixed cost of the run)

    def synthetic(row: str) -> tuple[torch.Tensor, list[str], list[str]]:
        if not drawn:
            t = time.perf_counter()
            drawn.append(_synthetic_set(cfg.seed + 1, max(n_need[r] for r in cfg.rows if r in n_need), candidates, size))
            draw_s.append(round(time.perf_counter() - t, 1))
        px, w, q = drawn[0]
        n = n_need[row]
        return px[:n], w[:n], q[:n]

    for row in cfg.rows:
        t1 = time.perf_counter()
        if row == "synthetic":
            n_syn = n_need[row]
            if n_syn <= 0:
                continue
            px_s, w_s, q_s = synthetic(row)
            model, losses = fine_tune(clip, tok, px_s, w_s, q_s, candidates, "naive", cfg, precision, progress)
            extra = {"images": n_syn}
        elif row == "synthetic_ce":  # the world's training words + the synthetic set, every candidate each step
            if cfg.ce_steps <= 0:
                continue
            n_syn = n_need[row]
            px_s, w_s, q_s = synthetic(row)
            model, curves = fine_tune_candidates(clip, tok, torch.cat([px_tr, px_s]), train_words + w_s,
                                                 train_q + q_s, candidates, cfg, precision, progress)
            losses = curves["image"]
            extra = {"images": len(train_words) + n_syn, "steps": cfg.ce_steps, "text_steps": cfg.ce_text_steps,
                     "text_loss_last": round(float(np.mean(curves["text"][-10:])), 4) if curves["text"] else None}
        else:
            model, losses = fine_tune(clip, tok, px_tr, train_words, train_q, candidates, row, cfg, precision, progress)
            extra = {"images": len(train_words)}
        rows[row] = {**score(model), **extra, "seconds": round(time.perf_counter() - t1, 1),
                     "loss_first": round(float(np.mean(losses[:10])), 4),
                     "loss_last": round(float(np.mean(losses[-10:])), 4)}
        tuned[row] = model
    key = "val" if have_val else "test"
    best = max(tuned, key=lambda r: rows[r][key]) if tuned else None
    if best is not None:
        rows["crops"] = {**score(tuned[best], cfg.crop), "of": best}
        rows["zero_shot_crops"] = score(clip, cfg.crop)
        save_clip(m, tuned[best], "clip_reading")
    chance = 100.0 / len(candidates)
    out = {
        "zero_shot": rows["zero_shot"]["test"], "fine_tuned": rows[best]["test"] if best else None,
        "fine_tuned_row": best, "chosen_on": key, "chance": chance, "candidates": len(candidates),
        "test_items": len(te.words), "train_items": len(tr.words), "steps": cfg.steps, "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1), "synthetic_draw_s": draw_s[0] if draw_s else None,
        "precision": precision, "config": asdict(cfg),
        "loss_first": rows[best]["loss_first"] if best else None, "loss_last": rows[best]["loss_last"] if best else None,
    }
    if best is not None:
        m.extra["reading"] = {"checkpoint": "clip_reading", "candidates": candidates, "row": best,
                              "text": "{question} {answer}", "crops": None}
    m.metrics["reading"] = out
    m.save()
    return out
