"""Shared training plumbing: seeds, threads, schedules, image tensors, batched inference."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch

from clipq.runtime.preprocess import CLIP_MEAN, CLIP_STD


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def set_threads(threads: int | None = None) -> int:
    n = threads or int(os.environ.get("CLIPQ_THREADS", 0)) or (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_precision(precision: str = "auto") -> str:
    """``fp32`` or ``bf16``; ``auto`` picks bf16 only where the CPU has bf16 units (AVX512-BF16 or AMX).

    Elsewhere bf16 autocast is emulated and slower than fp32.

    Raises:
        ClipqError: an unknown precision name.
    """
    from clipq.runtime.errors import ClipqError

    if precision not in ("auto", "fp32", "bf16"):
        raise ClipqError(f"unknown precision {precision!r}; choose auto, fp32 or bf16")
    if precision != "auto":
        return precision
    return "bf16" if cpu_flags() & {"avx512_bf16", "amx_bf16"} else "fp32"


def optimizer_step(opt, sched, loss: torch.Tensor, clip: list | None = None) -> None:
    """One training step: backward, gradient-norm clipping of ``clip`` to 1.0 (none if empty), step, schedule."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(clip, 1.0)
    opt.step()
    sched.step()


def contrastive_step(opt, sched, loss: torch.Tensor, model: torch.nn.Module) -> None:
    """``optimizer_step`` for a model with CLIP's learned temperature: every parameter's gradient clipped,
    then ``model.logit_scale`` clamped so that the temperature exp(logit_scale) stays at most 100, as in CLIP."""
    optimizer_step(opt, sched, loss, clip=list(model.parameters()))
    with torch.no_grad():
        model.logit_scale.clamp_(0, 4.6052)


def channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Put the model's 4-d (convolution) weights in channels-last memory order, in place.

    oneDNN's CPU convolutions run natively on NHWC: with channels-last weights the ResNet tower's
    forward + backward at batch 128 took 80 ms instead of 143 (bf16, 2-core EPYC; docs/training.md).
    The inputs may stay NCHW (the first convolution's output follows the weights), and
    ``save_pretrained`` writes the weights contiguous, so checkpoints are unchanged.
    """
    return model.to(memory_format=torch.channels_last)


def autocast(precision: str):
    """``torch.autocast`` on CPU for bf16, a no-op context for fp32."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def cosine_with_warmup(optimizer: torch.optim.Optimizer, total: int | Callable[[], int],
                       warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then a cosine down to 5 % of the learning rate at step ``total``.

    ``total`` may be a callable, read at every step: a trainer with a time budget sets its length
    once it has measured its own steps (``ClipTrainConfig.max_seconds``).
    """

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        n = total() if callable(total) else total
        t = (step - warmup) / max(1, n - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, f)


def to_pixel_values(images: np.ndarray, size: int | None = None) -> torch.Tensor:
    """uint8 [N,H,W,3] -> normalised float32 [N,3,S,S] (resize only when the size differs).

    The synthetic world is drawn at the model's input size, so training needs no resize; real
    photos go through the same shortest-side bicubic resize + centre crop as the runtime.
    """
    if size is not None and images.shape[1:3] != (size, size):
        from PIL import Image

        from clipq.runtime.preprocess import ImagePreprocessor

        pre = ImagePreprocessor(size, CLIP_MEAN, CLIP_STD)
        return torch.from_numpy(pre([Image.fromarray(a) for a in images]))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def batches(n: int, batch_size: int, rng: np.random.Generator | None = None) -> Iterator[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]


@torch.inference_mode()
def batched(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Apply ``fn`` to aligned slices of ``tensors`` and concatenate the results."""
    n = tensors[0].shape[0]
    outs = [fn(*(t[i : i + batch_size] for t in tensors)) for i in range(0, n, batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


@torch.inference_mode()
def encode_texts(clip, tok, texts: list[str], batch_size: int = 512) -> np.ndarray:
    """CLIP text embeddings (L2-normalised, float32 [N, D]) of ``texts`` with the PyTorch tower."""
    from clipq.models.export_wrappers import ClipTextTower
    from clipq.models.io import tokenize

    tower = ClipTextTower(clip).eval()
    out = [tower(*tokenize(tok, texts[i : i + batch_size])) for i in range(0, len(texts), batch_size)]
    return torch.cat(out).numpy()
