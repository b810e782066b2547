"""The de-trigger AE's training loop: each batch a mix of clean images and images carrying a
training trigger (corner squares, the random sampler, an audit's synthesised triggers), the clean
image the target; the train_detrigger job's docstring describes the recipe."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from training.config import AE_TRIGGERS, AEConfig, run_name
from training.data.trigger_sampler import SamplerSpec, sample_triggers
from training.data.triggers import random_corner_patch
from training.inversion.synthesised import load_synthesised, stamp_synthesised
from training.nets.autoencoders import Clamp01, MaskedConvAutoencoder, build_autoencoder
from training.nets.checkpoints import config_dict, resume, save


def ae_batch(
    clean: torch.Tensor, cfg: AEConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input, target, mask target) for one AE step from clean float images (B, C, H, W). The
    mask target (B, 1, H, W) marks the pixels the mask should open: for corner squares the pixels
    they changed, for random triggers what training/data/trigger_sampler.py says."""
    if cfg.triggers not in AE_TRIGGERS:
        raise ValueError(
            f"unknown training triggers {cfg.triggers!r}; allowed: {', '.join(AE_TRIGGERS)}"
        )
    if cfg.triggers == "none" and not cfg.synthesised:
        raise ValueError('training triggers "none" need synthesised triggers (an audit folder)')
    x = clean.clone()
    stamped = rng.random(len(clean)) < cfg.triggered_share
    synth = np.zeros(len(clean), bool)
    if cfg.synthesised:
        share = 1.0 if cfg.triggers == "none" else cfg.synthesised_share
        synth = stamped & (rng.random(len(clean)) < share)
    own = stamped & ~synth
    paper = own if cfg.triggers == "corner" else np.zeros(len(clean), bool)
    if cfg.triggers == "random" and cfg.paper_share:  # no draw without: old runs stay as they were
        paper = own & (rng.random(len(clean)) < cfg.paper_share)
    changed = torch.zeros(len(clean), 1, *clean.shape[-2:])
    pidx = torch.from_numpy(np.flatnonzero(paper))
    if len(pidx):
        x[pidx], _ = random_corner_patch(clean[pidx], rng, cfg.trigger_size, cfg.trigger_value)
        changed[pidx] = changed_pixels(x[pidx], clean[pidx])
    idx = torch.from_numpy(np.flatnonzero(own & ~paper))
    if len(idx):
        spec = SamplerSpec(exclude=tuple(cfg.exclude), corner_share=cfg.corner_share)
        x[idx], changed[idx], family = sample_triggers(clean[idx], rng, spec)
        if cfg.residual:  # full-image triggers are the correction's: the mask stays shut
            kinds = np.array([f.kind for f in spec.active()])[family]
            changed[idx[torch.from_numpy(kinds != "patch")]] = 0.0
    sidx = torch.from_numpy(np.flatnonzero(synth))
    if len(sidx):
        triggers = load_synthesised(cfg.synthesised, cfg.synthesised_dilate)
        x[sidx], changed[sidx] = stamp_synthesised(clean[sidx], triggers, rng)
    return x, clean, changed


def changed_pixels(x: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) float: 1 where any channel of x differs from the clean image."""
    return ((x - clean).abs().amax(1, keepdim=True) > 0).float()


def detrigger_loss(
    ae: nn.Module,
    x: torch.Tensor,
    clean: torch.Tensor,
    cfg: AEConfig,
    changed: torch.Tensor | None = None,
) -> torch.Tensor:
    """L2 loss (the paper): mean squared error over pixels. For the masked conv AE, plus a BCE
    that teaches the mask `changed` (B, 1, H, W), by default the pixels the trigger changed."""
    inner = ae.ae if isinstance(ae, Clamp01) else ae
    if not isinstance(inner, MaskedConvAutoencoder):
        return F.mse_loss(ae(x), clean)
    mask_logit, fill, correction = inner.parts(x)  # (B, 1, H, W), (B, C, H, W) x 2
    # Not clipped: an extended fill or a correction is pulled to the clean value itself (a clip
    # would stop its gradient outside [0, 1]).
    out = inner.compose(x, mask_logit, fill, correction)
    if changed is None:
        changed = changed_pixels(x, clean)
    bce = F.binary_cross_entropy_with_logits(
        mask_logit, changed, pos_weight=torch.tensor(cfg.mask_pos_weight)
    )
    return cfg.l2_weight * F.mse_loss(out, clean) + cfg.mask_weight * bce


def train_autoencoder(
    cfg: AEConfig, train_images: np.ndarray, run_dir: Path, log=print
) -> nn.Module:
    """Train (or reload a finished run of) the AE of `cfg` on clean uint8 images (N, C, H, W)."""
    torch.set_num_threads(cfg.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = run_name(cfg)
    ckpt_path = run_dir / f"detrigger_{name}.ckpt"
    n, c, h, _ = train_images.shape
    torch.manual_seed(cfg.seed)
    ae = build_autoencoder(cfg.arch, c, h, cfg.width, cfg.fill, cfg.residual)
    opt = torch.optim.Adam(ae.parameters(), lr=cfg.lr)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    cfg_dict = config_dict(cfg)
    if cfg.synthesised:  # the audit folder's content, not only its name
        triggers = load_synthesised(cfg.synthesised, cfg.synthesised_dilate)
        cfg_dict["synthesised_sha256"] = triggers.sha256()

    start_epoch = resume(
        ckpt_path, cfg_dict, ae, opt, f"{name} AE", log, defaults=config_dict(AEConfig())
    )

    images_t = torch.from_numpy(train_images)
    for epoch in range(start_epoch, cfg.epochs):
        rng = np.random.default_rng(cfg.seed * 1000 + epoch)
        ae.train()
        perm = torch.from_numpy(rng.permutation(n))
        # Cosine decay to 10% of lr over the run, per step.
        t0, loss_sum, seen = time.time(), 0.0, 0
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"{name} AE epoch {epoch + 1}/{cfg.epochs}",
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
            x, target, changed = ae_batch(clean, cfg, rng)
            loss = detrigger_loss(ae, x, target, cfg, changed)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{loss_sum / seen:.5f}", refresh=False)
        dt = time.time() - t0
        log(
            f"{name} AE epoch {epoch + 1}/{cfg.epochs}: loss {loss_sum / seen:.6f} "
            f"({dt:.0f} s, {seen / dt:.0f} img/s)"
        )
        save(ckpt_path, cfg_dict, ae, opt, epoch + 1)
    ae.eval()
    return ae
