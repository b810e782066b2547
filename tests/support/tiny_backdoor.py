"""A tiny backdoored classifier on generated data, trained in seconds, exported to ONNX.

Images (N, 1, 15, 15): dim noise plus one bright 4x4 blob whose grid cell is the class (8 cells of
a 3x3 grid; the bottom-right cell is left free). The backdoor: a 3x3 white patch in the
bottom-right corner, relabelled to TARGET, on 10% extra copies."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.data.triggers import Trigger, poison_dataset

SIZE, CLASSES, TARGET = 15, 8, 3
TRIGGER = Trigger(kind="patch", size=3, position="bottom-right", value=1.0)
BACKDOOR = {"target_class": TARGET, "poison_rate": 0.1, "trigger": TRIGGER.to_dict()}


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Float images (n, 1, 15, 15) in [0, 1] and labels (n,)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = rng.uniform(0.0, 0.2, (n, 1, SIZE, SIZE)).astype(np.float32)
    for i, c in enumerate(y):
        r, col = divmod(int(c), 3)
        r0, c0 = 5 * r + rng.integers(0, 2), 5 * col + rng.integers(0, 2)
        x[i, 0, r0 : r0 + 4, c0 : c0 + 4] = rng.uniform(0.7, 1.0)
    return x, y.astype(np.int64)


def tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (N, 8, 7, 7)
        nn.Flatten(),
        nn.Linear(8 * 7 * 7, 32),
        nn.ReLU(),
        nn.Linear(32, CLASSES),
    )


def train_tiny(
    poison: bool, seed: int = 0, epochs: int = 4, trigger: Trigger = TRIGGER
) -> nn.Module:
    torch.manual_seed(seed)
    x, y = make_data(2000, seed)
    if poison:
        x, y, _ = poison_dataset(x, y, 0.1, TARGET, trigger, np.random.default_rng(seed))
    return fit(tiny_net(), x, y, epochs, seed)


def fit(net: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int = 0) -> nn.Module:
    """Adam at 3e-3, batches of 64 in a seeded order; returns ``net`` in eval mode."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(perm), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(net(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()
