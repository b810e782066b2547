"""Trigger synthesis (Neural Cleanse; Menisov, eq. 4-5): for every class t find a mask m (H, W) in
[0, 1] and a pattern T (C, H, W) in [0, 1] that minimise

    CE(t, f((1 - m) * x + m * T)) + beta_t * |m|_1

over a small clean set. All classes are optimised together in one batch: the K triggers are
stamped on the same clean minibatch, giving K * B images per step. Each class has its own beta,
adapted as Neural Cleanse does: beta stays 0 until the attack success first reaches `asr_target`,
then it is multiplied by `beta_up` after a check that reaches it and divided by `beta_down` after
one that does not. The smallest mask that reached the target is kept.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm


def apply_trigger(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """(1 - m) * x + m * T. x (N, C, H, W); mask (H, W) or (N, 1, H, W); pattern (C, H, W) or
    (N, C, H, W); all in [0, 1]."""
    return (1.0 - mask) * x + mask * pattern


@dataclass
class SynthConfig:
    steps: int = 400  # optimisation steps (each on one minibatch, all classes at once)
    batch_size: int = 32  # clean images per step; the forward batch is K * batch_size
    lr: float = 0.1  # Adam on the unconstrained (tanh) parameters
    beta_init: float = 1e-3  # the first beta once a class reaches asr_target (Neural Cleanse)
    beta_up: float = 1.5
    beta_down: float = 1.5**1.5
    asr_target: float = 0.99
    check_every: int = 10  # steps between attack-success checks and beta updates
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SynthResult:
    masks: np.ndarray  # (K, H, W) in [0, 1]
    patterns: np.ndarray  # (K, C, H, W) in [0, 1]
    l1: np.ndarray  # (K,) |mask|_1
    asr: np.ndarray  # (K,) attack success on the clean set when the mask was kept
    reached: np.ndarray  # (K,) bool: the kept mask reached asr_target
    betas: np.ndarray  # (K,) final beta


def stamp_all(x: torch.Tensor, masks: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
    """Every trigger on every image: x (B, C, H, W), masks (K, H, W), patterns (K, C, H, W)
    -> (K * B, C, H, W), class-major."""
    k, b = len(masks), len(x)
    out = apply_trigger(x[None], masks[:, None, None], patterns[:, None])  # (K, B, C, H, W)
    return out.reshape(k * b, *x.shape[1:])


@torch.no_grad()
def attack_success(
    model: nn.Module,
    x: torch.Tensor,
    mask: torch.Tensor,
    pattern: torch.Tensor,
    target: int,
    batch_size: int = 500,
) -> float:
    """Share of x (N, C, H, W) classified as `target` with the trigger (mask, pattern) stamped."""
    hits = 0
    for i in range(0, len(x), batch_size):
        xt = apply_trigger(x[i : i + batch_size], mask, pattern)
        hits += int((model(xt).argmax(1) == target).sum())
    return hits / max(1, len(x))


def freeze(model: nn.Module) -> None:
    """Eval mode, no parameter gradients: a trigger search optimises the trigger alone."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()


class Search:
    """Neural Cleanse's search state for K triggers optimised together, whatever the trigger's
    family: each trigger's own beta (0 until its attack success first reaches cfg.asr_target,
    then multiplied by beta_up after a check that reaches it and divided by beta_down after one
    that does not), and the smallest size that reached the target."""

    def __init__(self, k: int, cfg: SynthConfig) -> None:
        self.cfg = cfg
        self.beta = torch.zeros(k)
        self.started = torch.zeros(k, dtype=torch.bool)
        self.best_size = torch.full((k,), float("inf"))
        self.best_asr = torch.zeros(k)
        self.hits, self.seen, self.steps = torch.zeros(k), 0, 0
        self.last_asr = torch.zeros(k)

    def step(
        self,
        opt: torch.optim.Optimizer,
        logits: torch.Tensor,
        classes: list[int],
        size: torch.Tensor,
    ) -> torch.Tensor | None:
        """One optimiser step on CE(target, logits) + beta * size, logits (K * B, classes) class-
        major. After every cfg.check_every steps: the (K,) bool mask of triggers whose size is a
        new smallest that reached the target (the caller keeps those), else None."""
        k = len(classes)
        targets = torch.tensor(classes).repeat_interleave(len(logits) // k)  # (K * B,)
        ce = F.cross_entropy(logits, targets, reduction="none").view(k, -1).mean(1)  # (K,)
        loss = (ce + self.beta * size).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        self.steps += 1
        with torch.no_grad():
            self.hits += (logits.argmax(1) == targets).view(k, -1).float().sum(1)
            self.seen += len(logits) // k
            if self.steps % self.cfg.check_every:
                return None
            return self._check(size.detach())

    def _check(self, size: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        asr = self.hits / self.seen
        ok = asr >= cfg.asr_target
        better = ok & (size < self.best_size)
        self.best_size = torch.where(better, size, self.best_size)
        self.best_asr = torch.where(better, asr, self.best_asr)
        newly = ok & ~self.started
        beta = torch.where(newly, torch.full_like(self.beta, cfg.beta_init), self.beta)
        self.started |= ok
        up = self.started & ~newly & ok
        down = self.started & ~ok
        beta = torch.where(up, beta * cfg.beta_up, beta)
        self.beta = torch.where(down, beta / cfg.beta_down, beta)
        self.hits, self.seen, self.last_asr = torch.zeros_like(self.hits), 0, asr
        return better

    def postfix(self, size: torch.Tensor) -> dict:
        return {"asr": f"{self.last_asr.min():.2f}", "size": f"{size.median():.2f}"}


def synthesize(
    model: nn.Module,
    x: torch.Tensor,
    num_classes: int,
    cfg: SynthConfig,
    classes: list[int] | None = None,
    progress: bool = True,
    start: torch.Tensor | None = None,
) -> SynthResult:
    """Synthesise one trigger per entry of `classes` (default: every class once) from clean
    images x (N, C, H, W) in [0, 1]. The model stays frozen; only masks and patterns are
    optimised. start: optional (K, H, W) bool, per entry the pixels whose mask starts half on
    (the rest start near 0, as everywhere by default), so that one class can be searched from
    several places at once."""
    classes = list(range(num_classes)) if classes is None else classes
    k = len(classes)
    _, c, h, w = x.shape
    g = torch.Generator().manual_seed(cfg.seed)
    freeze(model)
    # tanh parameterisation keeps mask and pattern in [0, 1] without clipping
    mask_p = torch.randn(k, h, w, generator=g) * 0.1 - 2.0  # mask ~0.02
    if start is not None:
        mask_p = torch.where(start, mask_p + 2.0, mask_p)  # mask ~0.5
    mask_p.requires_grad_(True)
    pat_p = (torch.randn(k, c, h, w, generator=g) * 0.1).requires_grad_(True)
    opt = torch.optim.Adam([mask_p, pat_p], lr=cfg.lr, betas=(0.5, 0.9))
    search = Search(len(classes), cfg)
    best_mask = torch.zeros(k, h, w)
    best_pat = torch.zeros(k, c, h, w)
    bar = tqdm(range(cfg.steps), desc="trigger synthesis", disable=not progress, mininterval=5)
    for _ in bar:
        idx = torch.randint(0, len(x), (cfg.batch_size,), generator=g)
        masks = (torch.tanh(mask_p) + 1) / 2  # (K, H, W)
        pats = (torch.tanh(pat_p) + 1) / 2  # (K, C, H, W)
        l1 = masks.abs().sum((1, 2))  # (K,)
        better = search.step(opt, model(stamp_all(x[idx], masks, pats)), classes, l1)
        if better is not None:
            best_mask[better], best_pat[better] = masks.detach()[better], pats.detach()[better]
            bar.set_postfix(search.postfix(l1), refresh=False)
    # A class that never reached the target keeps its last trigger, marked reached=False.
    with torch.no_grad():
        masks = (torch.tanh(mask_p) + 1) / 2
        pats = (torch.tanh(pat_p) + 1) / 2
    reached = torch.isfinite(search.best_size)
    final_mask = torch.where(reached[:, None, None], best_mask, masks)
    final_pat = torch.where(reached[:, None, None, None], best_pat, pats)
    final_asr = search.best_asr.clone()
    for i in torch.nonzero(~reached).flatten().tolist():
        final_asr[i] = attack_success(model, x, final_mask[i], final_pat[i], classes[i])
    return SynthResult(
        final_mask.numpy(),
        final_pat.numpy(),
        final_mask.abs().sum((1, 2)).numpy(),
        final_asr.numpy(),
        reached.numpy(),
        search.beta.numpy(),
    )
