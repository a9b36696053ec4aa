"""VQA training (seed CLIQQA): variants v1..v4 on frozen CLIP image embeddings.

CLIP stays frozen in every variant, so its image embeddings are computed once and shared by all
variants (the demo's time goes to the parts that learn). Adam (0.9, 0.999), eps 1e-8, no weight
decay; lr 1e-4 for the mapper and head, 1e-5 for the LM once it is unfrozen (v3, v4).
"""

from __future__ import annotations

import copy
import logging
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from clipq.models.export_wrappers import ClipImageTower
from clipq.models.factory import build_lm
from clipq.models.io import load_clip, load_tokenizer, load_vqa, save_vqa, tokenize
from clipq.models.vqa import VQA_VARIANTS, VQAConfig, VQAModel
from clipq.runtime.errors import ClipqError, DataFormatError
from clipq.runtime.manifest import Manifest
from clipq.runtime.metrics import accuracy

from .common import autocast, batched, channels_last, resolve_precision, seed_everything, set_threads
from .data import load_split

log = logging.getLogger(__name__)
QTYPES = ("object", "number", "color", "location")


@dataclass(frozen=True, kw_only=True)
class VQATrainConfig:
    batch_size: int = 64
    lr: float = 1e-4
    lm_lr: float = 1e-5
    questions_per_epoch: int | None = 6000  # cap per epoch (time budget); None = all
    max_answers: int = 1000
    #: val questions scored per variant (a fixed random subset; None: all). Val only picks the exported
    #: variant: at 1,000 questions one standard error is about 1.5 points, and scoring all 2,178 of the
    #: demo's world for each of five variants cost more time than that buys (docs/training.md#the-training-plan)
    val_questions: int | None = 1000
    precision: str = "auto"  # bf16 autocast where the CPU has bf16 units
    seed: int = 0


@dataclass
class EncodedQA:
    image_index: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor  # -1 = answer not in the vocabulary
    qtypes: list[str]


def build_answer_vocab(questions, max_answers: int) -> list[str]:
    counts = Counter(q.answer for q in questions)
    return [a for a, _ in counts.most_common(max_answers)]


def encode_questions(questions, split, tok, vocab: list[str]) -> EncodedQA:
    a2i = {a: i for i, a in enumerate(vocab)}
    keep = [q for q in questions if q.image_id in split.id_to_index]
    if len(keep) < len(questions):
        log.warning("%d questions refer to images outside the split and are skipped", len(questions) - len(keep))
    ids, mask = tokenize(tok, [q.question for q in keep])
    return EncodedQA(
        image_index=torch.tensor([split.id_to_index[q.image_id] for q in keep]),
        input_ids=ids,
        attention_mask=mask,
        labels=torch.tensor([a2i.get(q.answer, -1) for q in keep]),
        qtypes=[q.qtype for q in keep],
    )


@torch.inference_mode()
def image_embeddings(m: Manifest, pixels: torch.Tensor) -> torch.Tensor:
    tower = channels_last(ClipImageTower(load_clip(m)).eval())
    return batched(tower, pixels, batch_size=256)


def _run_epoch(model, opt, emb, qa: EncodedQA, cfg: VQATrainConfig, rng, desc: str, progress: bool,
               precision: str = "fp32", max_seconds: float | None = None) -> tuple[float, int]:
    """One epoch (``questions_per_epoch`` questions), or until ``max_seconds``; returns (mean loss, steps)."""
    model.train()
    n = len(qa.labels)
    order = rng.permutation(n)
    order = order[qa.labels[order].numpy() >= 0]
    if cfg.questions_per_epoch:
        order = order[: cfg.questions_per_epoch]
    losses = []
    t0 = time.perf_counter()
    bar = tqdm(range(0, len(order), cfg.batch_size), desc=desc, disable=not progress, mininterval=1.0)
    for i in bar:
        if max_seconds is not None and losses and time.perf_counter() - t0 >= max_seconds:
            break  # at least one step, so the loss is defined
        idx = torch.from_numpy(order[i : i + cfg.batch_size])
        mask = qa.attention_mask[idx]
        length = int(mask.sum(1).max())
        with autocast(precision):
            logits = model(emb[qa.image_index[idx]], qa.input_ids[idx, :length], mask[:, :length])
        loss = F.cross_entropy(logits.float(), qa.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.eval()
    return (float(np.mean(losses)) if losses else float("nan")), len(losses)


@torch.inference_mode()
def predict(model: VQAModel, emb: torch.Tensor, qa: EncodedQA, batch_size: int = 256,
            precision: str = "fp32") -> np.ndarray:
    model.eval()
    preds = []
    for i in range(0, len(qa.labels), batch_size):
        sl = slice(i, i + batch_size)
        mask = qa.attention_mask[sl]
        length = int(mask.sum(1).max())
        with autocast(precision):
            logits = model(emb[qa.image_index[sl]], qa.input_ids[sl, :length], mask[:, :length])
        preds.append(logits.float().argmax(-1))
    return torch.cat(preds).numpy()


def accuracy_by_type(pred: np.ndarray, qa: EncodedQA) -> dict[str, float]:
    labels = qa.labels.numpy()
    types = np.array(qa.qtypes)
    out = {"overall": accuracy(pred, labels)}
    for t in QTYPES:
        sel = types == t
        if sel.any():
            out[t] = accuracy(pred[sel], labels[sel])
    return out


def _order(variants: list[str]) -> list[str]:
    """Dependency order: v1, v2, v3, v2t (needs v3's time), v4."""
    rank = {"v1": 0, "v2": 1, "v3": 2, "v2t": 3, "v4": 4}
    return sorted(dict.fromkeys(variants), key=lambda v: rank.get(v, 99))


def train_vqa(
    data: str,
    artifacts: str,
    *,
    variants: list[str] | None = None,
    cfg: VQATrainConfig | None = None,
    lm_pretrained: str | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> dict[str, dict]:
    """Train the requested VQA variants (v3 continues v2, v4 continues v3, v2t continues v2).

    Every variant is scored on val and test; the exported default (``extra.vqa.export_variant``) is
    the best on val, never chosen on test.

    Returns:
        per variant: accuracy overall and per question type on test (``val``: the same on val),
        seconds (training + scoring), train_seconds, steps, loss.
    Raises:
        ClipqError: an unknown variant, or a variant whose starting point is neither trained now nor
            in the artifacts.
    """
    cfg = cfg or VQATrainConfig()
    variants = _order(variants or ["v1", "v2", "v3", "v2t", "v4"])
    for v in variants:
        if v not in VQA_VARIANTS:
            raise ClipqError(f"unknown VQA variant {v!r}; choose from {', '.join(VQA_VARIANTS)}")
    set_threads(threads)
    precision = resolve_precision(cfg.precision)
    m = Manifest.load(artifacts)
    size = m.preprocessing["size"]
    train, test = load_split(data, "train", size), load_split(data, "test", size)
    val = _optional_split(data, "val", size)
    tok = load_tokenizer(m, "lm")
    vocab = m.answer_vocab or build_answer_vocab(train.questions, cfg.max_answers)
    m.answer_vocab = vocab
    qa_train = encode_questions(train.questions, train, tok, vocab)
    qa_test = encode_questions(test.questions, test, tok, vocab)
    val_qs = list(val.questions) if val is not None else []
    if cfg.val_questions is not None and len(val_qs) > cfg.val_questions:
        pick = np.sort(np.random.default_rng(cfg.seed).choice(len(val_qs), cfg.val_questions, replace=False))
        val_qs = [val_qs[i] for i in pick]
    qa_val = encode_questions(val_qs, val, tok, vocab) if val_qs else None
    emb_train, emb_test = image_embeddings(m, train.pixels), image_embeddings(m, test.pixels)
    emb_val = image_embeddings(m, val.pixels) if qa_val is not None else None
    lm_kind = m.extra.get("lm", "minilm")
    prefix_len = int(m.extra.get("vqa_prefix_len", 4))
    results: dict[str, dict] = dict(m.extra.get("vqa", {}).get("results", {}))
    trained: dict[str, VQAModel] = {}
    for v in variants:
        spec = VQA_VARIANTS[v]
        seed_everything(cfg.seed)
        rng = np.random.default_rng(cfg.seed + sum(map(ord, v)))
        t0 = time.perf_counter()
        if spec.init_from is None:
            lm = build_lm(lm_kind, lm_pretrained, seed=cfg.seed)
            model = VQAModel(
                VQAConfig(embed_dim=emb_train.shape[1], n_answers=len(vocab), prefix_len=prefix_len,
                          use_mapper=spec.use_mapper),
                lm,
            )
        else:
            src = trained.get(spec.init_from)
            if src is None:
                if f"vqa_{spec.init_from}" not in m.checkpoints:
                    raise ClipqError(f"variant {v} continues {spec.init_from}: train {spec.init_from} first")
                src = load_vqa(m, spec.init_from)
            model = copy.deepcopy(src)  # the earlier variant stays as trained
        loss, steps = float("nan"), 0
        frozen_epochs, budget = spec.epochs_frozen, None
        if spec.time_of is not None:
            ref = results.get(spec.time_of, {}).get("train_seconds")
            if ref is None:
                raise ClipqError(f"variant {v} trains as long as {spec.time_of} did: train {spec.time_of} first")
            frozen_epochs, budget = 10**6, float(ref)
        if frozen_epochs:
            model.freeze_lm(True)
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=True)
            e = 0
            while e < frozen_epochs and (budget is None or e == 0 or time.perf_counter() - t0 < budget):
                left = None if budget is None else max(0.0, budget - (time.perf_counter() - t0))
                loss, k = _run_epoch(model, opt, emb_train, qa_train, cfg, rng, f"vqa {v} epoch {e + 1} (LM frozen)",
                                     progress, precision, max_seconds=left)
                steps += k
                e += 1
        if spec.epochs_unfrozen:
            model.freeze_lm(False)
            lm_params = list(model.lm.parameters())
            lm_ids = {id(p) for p in lm_params}
            rest = [p for p in model.parameters() if id(p) not in lm_ids]
            opt = torch.optim.Adam(
                [{"params": rest, "lr": cfg.lr}, {"params": lm_params, "lr": cfg.lm_lr}],
                betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=True,
            )
            for e in range(spec.epochs_unfrozen):
                loss, k = _run_epoch(model, opt, emb_train, qa_train, cfg, rng,
                                     f"vqa {v} epoch {e + 1} (LM unfrozen)", progress, precision)
                steps += k
        train_seconds = time.perf_counter() - t0
        model.freeze_lm(False)
        model.eval()
        acc = accuracy_by_type(predict(model, emb_test, qa_test, precision=precision), qa_test)
        res = {**acc, "seconds": round(time.perf_counter() - t0, 1), "train_seconds": round(train_seconds, 1),
               "steps": steps, "final_loss": round(loss, 4)}
        if qa_val is not None:
            res["val"] = accuracy_by_type(predict(model, emb_val, qa_val, precision=precision), qa_val)
        results[v] = res
        log.info("vqa %s: %s", v, results[v])
        trained[v] = model
        save_vqa(m, v, model)
    vqa_extra = m.extra.setdefault("vqa", {})
    vqa_extra["results"] = results
    on = "val" if all("val" in r for r in results.values()) else "test"
    best = max(results, key=lambda k: (results[k]["val"] if on == "val" else results[k])["overall"])
    vqa_extra["export_variant"] = best
    vqa_extra["export_variant_chosen_on"] = on
    vqa_extra["lm"] = lm_kind if lm_pretrained is None else f"pretrained:{lm_pretrained}"
    vqa_extra["precision"] = precision
    vqa_extra["val_questions"] = len(val_qs)
    m.metrics["vqa"] = results
    m.save()
    return results


def _optional_split(data: str, name: str, size: int):
    try:
        return load_split(data, name, size)
    except DataFormatError:
        return None
