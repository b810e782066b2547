"""Batch augmentation on float tensors (N, C, H, W), driven by an explicit torch.Generator so that
a run (and a resumed run) sees the same batches. The trigger is stamped AFTER augmentation, so a
flip never moves the top-left trigger to the top-right."""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUGMENTS = ("none", "flip", "translate", "flip-translate")


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(len(x), generator=g) < 0.5
    out = x.clone()
    out[flip] = x[flip].flip(-1)
    return out


def random_translate(x: torch.Tensor, g: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Shift each image by up to `pad` pixels in each direction (reflect padding, then crop)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")  # (N, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    out = torch.empty_like(x)
    # One slice per distinct shift: at most (2p+1)^2 = 25 slices instead of N.
    for sy in range(2 * pad + 1):
        for sx in range(2 * pad + 1):
            sel = (dy == sy) & (dx == sx)
            if sel.any():
                out[sel] = padded[sel, :, sy : sy + h, sx : sx + w]
    return out


def augment(x: torch.Tensor, kind: str, g: torch.Generator) -> torch.Tensor:
    if kind not in AUGMENTS:
        raise ValueError(f"unknown augmentation {kind!r}; allowed: {', '.join(AUGMENTS)}")
    if "flip" in kind:
        x = random_flip(x, g)
    if "translate" in kind:
        x = random_translate(x, g)
    return x
