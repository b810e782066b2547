"""The target classifier's training loop (BadNets poisoning, resumable checkpoints); the
train_target job's docstring describes the poisoning and fine-tuning it does."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from training.config import TargetConfig, backdoors
from training.data.augment import AUGMENTS, augment
from training.data.datasets import to_float
from training.data.triggers import poison_index_multi, stamp_change, stamp_pairs
from training.nets.checkpoints import config_dict, resume, save
from training.nets.models import build_target
from training.nets.onnx_torch import load_onnx_module


def lr_factor(step: int, total: int, schedule: str) -> float:
    """Multiplier of the peak lr at `step` of `total`."""
    if schedule == "constant":
        return 1.0
    if schedule == "onecycle":
        warm = max(1, int(0.2 * total))
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))
    raise ValueError(f"unknown schedule {schedule!r}; allowed: onecycle, constant")


def make_optimizer(model: nn.Module, cfg: TargetConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        # No weight decay on BatchNorm parameters and biases (the usual practice).
        decay = [p for p in model.parameters() if p.ndim > 1]
        rest = [p for p in model.parameters() if p.ndim <= 1]
        return torch.optim.SGD(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": rest, "weight_decay": 0.0},
            ],
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=True,
        )
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; allowed: adam, sgd")


def train_target(
    cfg: TargetConfig,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    mean: list[float],
    std: list[float],
    run_dir: Path,
    log=print,
) -> nn.Module:
    """Train (or resume, or reload when finished) the target model of `cfg` in run_dir.
    train_images: (N, C, H, W) uint8 of the training split with the validation images removed."""
    if cfg.augment not in AUGMENTS:
        raise ValueError(f"unknown augmentation {cfg.augment!r}; allowed: {', '.join(AUGMENTS)}")
    torch.set_num_threads(cfg.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "target.ckpt"
    n, c, h, w = train_images.shape
    num_classes = int(train_labels.max()) + 1

    torch.manual_seed(cfg.seed)
    from_onnx = bool(cfg.init_from) and str(cfg.init_from).endswith(".onnx")
    if from_onnx:
        model: nn.Module = load_onnx_module(str(cfg.init_from))
    else:
        model = build_target(cfg.arch, c, num_classes, h, mean, std, cfg.widths)
    model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, cfg)
    pairs = backdoors(cfg)
    triggers = [t for t, _ in pairs]
    changes = None
    if cfg.poison_focus:
        changes = [stamp_change(train_images, t, mirrored="flip" in cfg.augment) for t in triggers]
    src, y, pair = poison_index_multi(
        train_labels,
        cfg.poison_rate,
        [k for _, k in pairs],
        np.random.default_rng(cfg.seed),
        focus=cfg.poison_focus,
        changes=changes,
    )
    steps_per_epoch = math.ceil(len(src) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch

    cfg_dict = config_dict(cfg)  # tuples -> lists, as stored
    start_epoch = resume(
        ckpt_path, cfg_dict, model, opt, "target", log, defaults=config_dict(TargetConfig())
    )
    if start_epoch == 0 and from_onnx:
        log(f"fine-tuning the target from the ONNX graph {cfg.init_from}")
    elif start_epoch == 0 and cfg.init_from:
        init = torch.load(cfg.init_from, weights_only=False)
        model.load_state_dict(init["model"])
        log(f"fine-tuning the target from {cfg.init_from} (trained {init.get('epoch')} epochs)")

    images_t = torch.from_numpy(train_images)
    src_t, y_t, pair_t = torch.from_numpy(src), torch.from_numpy(y), torch.from_numpy(pair)
    for epoch in range(start_epoch, cfg.epochs):
        # Per-epoch seeds make a resumed run identical to an uninterrupted one.
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout
        model.train()
        perm = torch.randperm(len(src_t), generator=g)
        t0, seen, correct, loss_sum = time.time(), 0, 0, 0.0
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"target epoch {epoch + 1}/{cfg.epochs}",
            mininterval=10,
            leave=False,
        )
        for i in bar:
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x = augment(to_float(images_t[src_t[idx]]), cfg.augment, g)  # (B, C, H, W)
            x = stamp_pairs(x, pair_t[idx], triggers)
            x = x.contiguous(memory_format=torch.channels_last)
            target = y_t[idx]
            step = epoch * steps_per_epoch + i
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, total, cfg.schedule)
            logits = model(x)
            loss = F.cross_entropy(logits, target, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(idx)
            correct += int((logits.argmax(1) == target).sum())
            loss_sum += loss.item() * len(idx)
            bar.set_postfix(
                loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False
            )
        dt = time.time() - t0
        log(
            f"target epoch {epoch + 1}/{cfg.epochs}: loss {loss_sum / seen:.4f} "
            f"train acc {correct / seen:.4f} ({dt:.0f} s, {seen / dt:.0f} img/s)"
        )
        save(ckpt_path, cfg_dict, model, opt, epoch + 1)
    model.eval()
    return model
