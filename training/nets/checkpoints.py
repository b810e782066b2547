"""Resumable training checkpoints: weights, optimizer, finished epochs and the config.

A checkpoint stores its config as a JSON-ready dict. When a config dataclass gains a field, the
field's default is the value that reproduces what was trained before it existed; configs are
then compared with keys missing on either side filled from those defaults, so that the
checkpoints in runs/ written before the field stay valid (no retraining)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn


def config_dict(cfg: Any) -> dict:
    """A config dataclass as it is stored: JSON types only (tuples become lists)."""
    return json.loads(json.dumps(asdict(cfg)))


def same_config(a: dict, b: dict, defaults: dict | None = None) -> bool:
    """Configs match for resuming when they agree on everything but the thread count (an execution
    detail; the report records it). A key missing from one of them counts as its value in
    `defaults` (the config class's defaults, see config_dict), if it has one there."""
    defaults = defaults or {}

    def full(c: dict) -> dict:
        return {k: v for k, v in {**defaults, **c}.items() if k != "threads"}

    return full(a) == full(b)


def resume(
    path: Path,
    config: dict,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    what: str,
    log: Callable[[str], None],
    defaults: dict | None = None,
) -> int:
    """Restore ``model`` and ``optimizer`` from ``path`` when it was made with the same config
    (keys missing on either side taken from ``defaults``); returns the epochs already done (0 when
    there is nothing to resume)."""
    if not path.is_file():
        return 0
    ckpt = torch.load(path, weights_only=False)
    if not same_config(ckpt["config"], config, defaults):
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
