"""Train a de-trigger autoencoder: map an image carrying a random 4x4 white square in a random
corner back to the clean image, and map an untouched image to itself.

Each batch is a mix: a share `triggered_share` of the images get the random-corner square, the rest
are left as they are; the target is always the clean image (L2 loss). Training on untouched
images as well teaches the AE to leave clean images alone, which keeps false positives down.
The AE never sees the target model nor the real trigger's position (it learns all four corners).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from training.autoencoders import Clamp01, MaskedConvAutoencoder, build_autoencoder
from training.checkpoints import resume, save
from training.triggers import random_corner_patch


@dataclass
class AEConfig:
    arch: str = "conv"
    epochs: int = 4
    batch_size: int = 128
    lr: float = 1e-3  # Adam
    width: int = 16  # conv only
    triggered_share: float = 0.5  # share of each batch that gets a random-corner square
    mask_weight: float = 1.0  # conv only: weight of the BCE loss on the mask
    mask_pos_weight: float = 5.0  # conv only: BCE weight of trigger pixels (they are ~1%)
    trigger_size: int = 4
    trigger_value: float = 1.0
    seed: int = 0
    threads: int = 2


def make_ae_batch(
    clean: torch.Tensor, cfg: AEConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target) for one AE step from clean float images (B, C, H, W)."""
    x = clean.clone()
    stamped = rng.random(len(clean)) < cfg.triggered_share
    idx = np.flatnonzero(stamped)
    if len(idx):
        x[torch.from_numpy(idx)], _ = random_corner_patch(
            clean[torch.from_numpy(idx)], rng, cfg.trigger_size, cfg.trigger_value
        )
    return x, clean


def detrigger_loss(
    ae: nn.Module, x: torch.Tensor, clean: torch.Tensor, cfg: AEConfig
) -> torch.Tensor:
    """L2 loss (the paper): mean squared error over pixels. For the masked conv AE, plus a BCE
    that teaches the mask the pixels the trigger changed."""
    inner = ae.ae if isinstance(ae, Clamp01) else ae
    if not isinstance(inner, MaskedConvAutoencoder):
        return F.mse_loss(ae(x), clean)
    mask_logit, fill = inner.parts(x)  # (B, 1, H, W), (B, C, H, W)
    mask = torch.sigmoid(mask_logit)
    out = ((1 - mask) * x + mask * fill).clamp(0.0, 1.0)
    changed = ((x - clean).abs().amax(1, keepdim=True) > 0).float()  # (B, 1, H, W)
    bce = F.binary_cross_entropy_with_logits(
        mask_logit, changed, pos_weight=torch.tensor(cfg.mask_pos_weight)
    )
    return F.mse_loss(out, clean) + cfg.mask_weight * bce


def train_autoencoder(
    cfg: AEConfig, train_images: np.ndarray, run_dir: Path, log=print
) -> nn.Module:
    """Train (or reload a finished run of) the AE of `cfg` on clean uint8 images (N, C, H, W)."""
    torch.set_num_threads(cfg.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / f"detrigger_{cfg.arch}.ckpt"
    n, c, h, _ = train_images.shape
    torch.manual_seed(cfg.seed)
    ae = build_autoencoder(cfg.arch, c, h, cfg.width)
    opt = torch.optim.Adam(ae.parameters(), lr=cfg.lr)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    cfg_dict = json.loads(json.dumps(asdict(cfg)))

    start_epoch = resume(ckpt_path, cfg_dict, ae, opt, f"{cfg.arch} AE", log)

    images_t = torch.from_numpy(train_images)
    for epoch in range(start_epoch, cfg.epochs):
        rng = np.random.default_rng(cfg.seed * 1000 + epoch)
        ae.train()
        perm = torch.from_numpy(rng.permutation(n))
        # Cosine decay to 10% of lr over the run, per step.
        t0, loss_sum, seen = time.time(), 0.0, 0
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"{cfg.arch} AE epoch {epoch + 1}/{cfg.epochs}",
            mininterval=10,
            leave=False,
        )
        for i in bar:
            step = epoch * steps_per_epoch + i
            frac = step / (cfg.epochs * steps_per_epoch)
            for group in opt.param_groups:
                group["lr"] = cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            clean = images_t[idx].float().div_(255.0)  # (B, C, H, W)
            x, target = make_ae_batch(clean, cfg, rng)
            loss = detrigger_loss(ae, x, target, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{loss_sum / seen:.5f}", refresh=False)
        dt = time.time() - t0
        log(
            f"{cfg.arch} AE epoch {epoch + 1}/{cfg.epochs}: loss {loss_sum / seen:.6f} "
            f"({dt:.0f} s, {seen / dt:.0f} img/s)"
        )
        save(ckpt_path, cfg_dict, ae, opt, epoch + 1)
    ae.eval()
    return ae
