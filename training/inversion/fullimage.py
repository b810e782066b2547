"""Trigger synthesis for triggers that are not patches (issue 22, point 4).

Neural Cleanse (synthesis.py) looks for the smallest MASK that sends clean images to a class, so
it finds patches and misses triggers spread over the whole image: on a blended backdoor its mask
came out faint and everywhere, and the class was not flagged. Two more families are searched the
same way (synthesis.Search: one trigger per class optimised together, Neural Cleanse's adaptive
beta, the smallest size that reaches the attack-success target kept):

- blend: (1 - a) * x + a * P, a full-image pattern P in [0, 1] and a blend weight a per class
  (Chen et al.'s blended trigger); size = a. It also covers additive full-image noise, filters and
  waves, whose change of every pixel is bounded the same way.
- warp: x resampled along a smooth displacement field, a g x g grid of control offsets upsampled
  bilinearly to the image (WaNet's construction, Nguyen & Tran, ICLR 2021); size = the mean
  absolute displacement in pixels.

A backdoored class is reached by a far smaller trigger of its family than any other class. Sizes
are compared by Neural Cleanse's anomaly index on a log scale (a blend weight or a displacement is
a ratio scale) with the MAD floored at LOG_MAD_FLOOR, so that an index of 2 always means a trigger
under ~55% of the median class's. Without the floor, classes whose sizes lie close together make
small differences look anomalous: on a clean MNIST model the ten blend weights lay within
0.33-0.52 (a log MAD of 0.044), and on a blended MNIST backdoor class 8 (0.32, against a median
near 0.5) scored 3.0 with a floor of 0.1 beside the real target's 15. A class that no trigger of
the family reached within the search counts as the family's largest size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from training.inversion.anomaly import anomaly_index
from training.inversion.identify import success
from training.inversion.synthesis import Search, SynthConfig, freeze

FAMILIES = ("blend", "warp")
WARP_GRID = 4  # control points per side of a synthesised warp field (WaNet's k = 4)
LOG_MAD_FLOOR = 0.2  # at index 2 a class needs under ~55% of the median class's trigger size


def blend(x: torch.Tensor, alpha: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """(1 - a) x + a P: x (B, C, H, W), alpha (K,), pattern (K, C, H, W) -> (K * B, C, H, W)."""
    a = alpha.reshape(-1, 1, 1, 1, 1)
    out = (1.0 - a) * x[None] + a * pattern[:, None]
    return out.reshape(-1, *x.shape[1:])


def warp(x: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W) resampled at (row + d_row, col + d_col) for each displacement field (K, 2,
    H, W) in pixels -> (K * B, C, H, W); bilinear, edge pixels repeat (training.data.transforms
    .warp in torch, differentiable)."""
    k, (b, _, h, w) = len(field), x.shape
    rows = torch.linspace(-1.0, 1.0, h)[:, None].expand(h, w)
    cols = torch.linspace(-1.0, 1.0, w)[None, :].expand(h, w)
    dr = field[:, 0] * (2.0 / max(h - 1, 1))
    dc = field[:, 1] * (2.0 / max(w - 1, 1))
    grid = torch.stack([cols + dc, rows + dr], dim=-1)  # (K, H, W, 2): x (column) first
    grid = grid.repeat_interleave(b, dim=0)  # (K * B, H, W, 2), class-major
    src = x.repeat(k, 1, 1, 1)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=True)


def warp_field(control: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Control offsets (K, 2, g, g) in pixels -> displacement fields (K, 2, H, W)."""
    return F.interpolate(control, size=(h, w), mode="bilinear", align_corners=True)


@dataclass(eq=False)  # compared by identity: the arrays have no single truth value
class FullImageTrigger:
    """One synthesised full-image trigger; called on a batch (N, C, H, W) it returns the batch
    carrying it (what identify.success, pruning and unlearning stamp)."""

    family: str
    size: float
    alpha: float = 0.0  # blend
    pattern: np.ndarray | None = None  # blend, (C, H, W)
    field: np.ndarray | None = None  # warp, (2, H, W) pixels

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.family == "blend":
            assert self.pattern is not None
            p = torch.from_numpy(self.pattern).float()[None]
            return blend(x, torch.tensor([self.alpha]), p)
        assert self.field is not None
        return warp(x, torch.from_numpy(self.field).float()[None])

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """What triggers.npz stores of it."""
        if self.family == "blend":
            assert self.pattern is not None
            return {f"{prefix}_alpha": np.float32(self.alpha), f"{prefix}_pattern": self.pattern}
        assert self.field is not None
        return {f"{prefix}_field": self.field}


@dataclass
class FamilyResult:
    family: str
    size: np.ndarray  # (K,) blend weight, or mean displacement in pixels
    asr: np.ndarray  # (K,) attack success on the clean set of the kept trigger
    reached: np.ndarray  # (K,) bool: the kept trigger reached the attack-success target
    triggers: list[FullImageTrigger]

    def comparable(self) -> np.ndarray:
        """Sizes for the anomaly index: an unreached class counts as the family's largest size
        (at least the largest reached one), so it can only lower the median's side."""
        size = np.asarray(self.size, np.float64).copy()
        cap = FAMILY_MAX[self.family]
        if self.reached.any():
            cap = max(cap, float(size[self.reached].max()))
        size[~self.reached] = cap
        return size

    def anomaly_index(self) -> np.ndarray:
        """(K,) small-side anomaly index of the log sizes, the MAD floored at LOG_MAD_FLOOR."""
        return anomaly_index(self.comparable(), log=True, min_mad=LOG_MAD_FLOOR)


# The size a family's trigger may grow to: a blend weight of 1 replaces the image; a warp whose
# mean displacement is a quarter of a 28-pixel side no longer keeps the image's content.
FAMILY_MAX = {"blend": 1.0, "warp": 7.0}


def synthesize_family(
    family: str,
    model: nn.Module,
    x: torch.Tensor,
    num_classes: int,
    cfg: SynthConfig,
    progress: bool = True,
) -> FamilyResult:
    """The smallest trigger of `family` for every class, from clean images x (N, C, H, W) in
    [0, 1]; the model stays frozen."""
    if family not in FAMILIES:
        raise ValueError(f"unknown trigger family {family!r}; allowed: {', '.join(FAMILIES)}")
    classes = list(range(num_classes))
    k = len(classes)
    _, c, h, w = x.shape
    g = torch.Generator().manual_seed(cfg.seed)
    freeze(model)
    if family == "blend":
        alpha_p = torch.full((k,), -3.0, requires_grad=True)  # a = sigmoid(-3) ~ 0.05
        pat_p = (torch.randn(k, c, h, w, generator=g) * 0.1).requires_grad_(True)
        params = [alpha_p, pat_p]
    else:
        control = (torch.randn(k, 2, WARP_GRID, WARP_GRID, generator=g) * 0.1).requires_grad_(True)
        params = [control]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.5, 0.9))
    search = Search(k, cfg)
    best: list[torch.Tensor] | None = None  # the kept values, made at the first check
    bar = tqdm(range(cfg.steps), desc=f"{family} synthesis", disable=not progress, mininterval=5)
    for _ in bar:
        xb = x[torch.randint(0, len(x), (cfg.batch_size,), generator=g)]
        values, size = _values(family, params, (h, w))
        stamped = blend(xb, *values) if family == "blend" else warp(xb, *values)
        better = search.step(opt, model(stamped), classes, size)
        if better is not None:
            best = best or [torch.zeros_like(v) for v in values]
            for kept, v in zip(best, values, strict=True):
                kept[better] = v.detach()[better]
            bar.set_postfix(search.postfix(size), refresh=False)
    return _result(family, model, x, search, best, params, (h, w))


def _values(
    family: str, params: list[torch.Tensor], hw: tuple[int, int]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The triggers' constrained values from their parameters, (K,) sizes: blend -> ([blend
    weights (K,), patterns (K, C, H, W)], the weights); warp -> ([fields (K, 2, H, W)], their
    mean absolute displacement)."""
    if family == "blend":
        alpha = torch.sigmoid(params[0])
        return [alpha, (torch.tanh(params[1]) + 1) / 2], alpha
    field = warp_field(params[0], *hw)
    return [field], field.abs().mean((1, 2, 3))


def _result(
    family: str,
    model: nn.Module,
    x: torch.Tensor,
    search: Search,
    best: list[torch.Tensor] | None,
    params: list[torch.Tensor],
    hw: tuple[int, int],
) -> FamilyResult:
    """Each class's kept trigger, or its last one (reached False) where none reached the
    target."""
    reached = torch.isfinite(search.best_size)
    with torch.no_grad():
        last, _ = _values(family, params, hw)
    final = [
        torch.where(reached.view(-1, *[1] * (v.dim() - 1)), b, v)
        for b, v in zip(best or last, last, strict=True)
    ]
    triggers = []
    for i in range(len(reached)):
        if family == "blend":
            t = FullImageTrigger(
                family, float(final[0][i]), alpha=float(final[0][i]), pattern=final[1][i].numpy()
            )
        else:
            f = final[0][i].numpy()
            t = FullImageTrigger(family, float(np.abs(f).mean()), field=f)
        triggers.append(t)
    asr = search.best_asr.clone()
    for i in torch.nonzero(~reached).flatten().tolist():
        asr[i] = success(model, x, triggers[i], i)
    size = np.array([t.size for t in triggers], np.float64)
    return FamilyResult(family, size, asr.numpy(), reached.numpy(), triggers)
