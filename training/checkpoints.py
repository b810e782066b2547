"""Resumable training checkpoints: weights, optimizer, finished epochs and the config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


def same_config(a: dict, b: dict) -> bool:
    """Configs match for resuming when they agree on everything but the thread count (an execution
    detail; the report records it)."""
    return {k: v for k, v in a.items() if k != "threads"} == {
        k: v for k, v in b.items() if k != "threads"
    }


def resume(
    path: Path,
    config: dict,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    what: str,
    log: Callable[[str], None],
) -> int:
    """Restore ``model`` and ``optimizer`` from ``path`` when it was made with the same config;
    returns the epochs already done (0 when there is nothing to resume)."""
    if not path.is_file():
        return 0
    ckpt = torch.load(path, weights_only=False)
    if not same_config(ckpt["config"], config):
        log(f"{path} was made with another config; training {what} from scratch")
        return 0
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    log(f"resuming {what} from {path} at epoch {ckpt['epoch']}")
    return int(ckpt["epoch"])


def save(
    path: Path, config: dict, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int
) -> None:
    """Write the checkpoint after ``epoch`` finished epochs."""
    torch.save(
        {
            "config": config,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
        },
        path,
    )
