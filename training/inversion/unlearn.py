"""Repair by unlearning (the paper's "cancellation of training"): fine-tune for one epoch on
`clean_share` of the clean training data plus `trigger_share` of it carrying a synthesised
trigger, all with their TRUE labels, so that the model learns to ignore the trigger. With several
synthesised triggers (the audit's restarts) each stamped image carries one of them, drawn once per
image."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from training.inversion.synthesis import apply_trigger


@dataclass
class UnlearnConfig:
    clean_share: float = 0.2
    trigger_share: float = 0.2
    epochs: int = 1
    batch_size: int = 128
    # Adam. lr and dilate: chosen by `python -m training.audit.tune` on MNIST validation data
    # (reports/audit/tuning/mnist.md); the other sets use them out of sample.
    lr: float = 1e-3
    seed: int = 0
    # Grow the synthesised mask by this many pixels (max-pool) before stamping. The synthesised
    # mask is a minimal subset of the real trigger (the paper: "redundant pixels ... removed");
    # growing it shows the synthesised pattern around it, so more of the trigger is unlearned.
    dilate: int = 2
    # "constant" lr, or "cosine": decayed to 0 over the run, so that the fine-tune ends gently.
    schedule: str = "constant"

    def to_dict(self) -> dict:
        return asdict(self)


SCHEDULES = ("constant", "cosine")


def lr_factor(step: int, total: int, schedule: str) -> float:
    """The share of cfg.lr used at optimiser step ``step`` of ``total``."""
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    return 1.0


def dilate_mask(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey dilation of a mask (H, W) by `radius` pixels (a (2r+1)^2 max filter)."""
    if radius <= 0:
        return mask
    return F.max_pool2d(mask[None, None], 2 * radius + 1, 1, radius)[0, 0]


def unlearning_set(
    n: int, cfg: UnlearnConfig, n_triggers: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices (M,), triggered flag (M,), trigger of each image (M,)): two disjoint random draws
    over n training images, clean_share * n clean and trigger_share * n to be stamped, each with
    one of n_triggers triggers (uniform; all 0 for one trigger)."""
    perm = np.random.default_rng(cfg.seed).permutation(n)
    nc, nt = int(round(cfg.clean_share * n)), int(round(cfg.trigger_share * n))
    if nc + nt > n:
        raise ValueError(f"clean_share + trigger_share = {cfg.clean_share + cfg.trigger_share} > 1")
    idx = np.concatenate([perm[:nc], perm[nc : nc + nt]])
    flag = np.concatenate([np.zeros(nc, bool), np.ones(nt, bool)])
    which = np.zeros(len(idx), np.int64)
    if n_triggers > 1:
        which = np.random.default_rng([cfg.seed, 1]).integers(n_triggers, size=len(idx))
    return idx, flag, which


def unlearn(
    model: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    pattern: torch.Tensor,
    cfg: UnlearnConfig,
    progress: bool = True,
    others: Sequence[Callable[[torch.Tensor], torch.Tensor]] = (),
) -> list[float]:
    """Fine-tune `model` in place. images: uint8 or float (N, C, H, W); mask (H, W) and pattern
    (C, H, W), or several triggers: mask (T, H, W) and pattern (T, C, H, W) (T may be 0).
    `others`: triggers that are not masks (training.inversion.fullimage), each a function of a
    float batch; they are drawn like the masks, after them. Returns the mean loss of each
    epoch."""
    masks = mask[None] if mask.dim() == 2 else mask  # (T, H, W)
    patterns = pattern[None] if pattern.dim() == 3 else pattern  # (T, C, H, W)
    if len(masks) != len(patterns):
        raise ValueError(f"{len(masks)} masks but {len(patterns)} patterns")
    if len(masks) + len(others) == 0:
        raise ValueError("no trigger to unlearn")
    idx, flag, which = unlearning_set(len(images), cfg, len(masks) + len(others))
    if len(masks):
        masks = torch.stack([dilate_mask(m, cfg.dilate) for m in masks])
    masks = masks[:, None]  # (T, 1, H, W)
    g = torch.Generator().manual_seed(cfg.seed)
    for p in model.parameters():
        p.requires_grad_(True)
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {cfg.schedule!r}; allowed: {', '.join(SCHEDULES)}")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    idx_t, flag_t, which_t = torch.from_numpy(idx), torch.from_numpy(flag), torch.from_numpy(which)
    total_steps = cfg.epochs * math.ceil(len(idx_t) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, total_steps, cfg.schedule)
    )
    losses = []
    model.train()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(idx_t), generator=g)
        total, seen = 0.0, 0
        steps = range(0, len(perm), cfg.batch_size)
        for i in tqdm(
            steps, desc=f"unlearning epoch {epoch + 1}", disable=not progress, mininterval=5
        ):
            sel = perm[i : i + cfg.batch_size]
            x = images[idx_t[sel]]
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x.clone()  # (B, C, H, W)
            trig, which_b = flag_t[sel], which_t[sel]
            on = trig & (which_b < len(masks))
            t = which_b[on]
            x[on] = apply_trigger(x[on], masks[t], patterns[t])
            for j, stamp in enumerate(others):
                on = trig & (which_b == len(masks) + j)
                if on.any():
                    x[on] = stamp(x[on])
            y = labels[idx_t[sel]]
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(sel)
            seen += len(sel)
        losses.append(total / seen)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return losses
