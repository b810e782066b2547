"""Search a flagged class's trigger again from several starting places.

Neural Cleanse's optimisation starts every mask near zero everywhere and follows the gradient to
the nearest small trigger, which need not be the smallest one: on the CIFAR-10 target trained with
focused poisoning (README, "CIFAR-10 attack success") the sweep stopped at a 16-pixel mask on the
right edge, while the real trigger is a top-left square that a 7-pixel mask already fires. So once
a class is flagged, its trigger is synthesised again `restarts` times, each run starting with the
mask half on in one region: the four corners (where patch triggers are usually put), the centre,
then seeded random places. Every trigger that reaches the attack-success target and is at most
`keep_factor` times the smallest one's L1 is kept: the smallest identifies the trigger; all of them
are unlearned, since a model may answer to several small triggers.

Flagging itself is untouched: it uses the one sweep that treats every class alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from training.inversion.synthesis import SynthConfig, SynthResult, synthesize

NAMED_REGIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "centre")


def start_regions(n: int, height: int, width: int, seed: int = 0) -> tuple[list[str], torch.Tensor]:
    """(names, starts (n, H, W) bool): square regions a quarter of the image's side, the named
    ones first, then random places drawn with `seed`."""
    side = max(1, min(height, width) // 4)
    corners = {
        "top-left": (0, 0),
        "top-right": (0, width - side),
        "bottom-left": (height - side, 0),
        "bottom-right": (height - side, width - side),
        "centre": ((height - side) // 2, (width - side) // 2),
    }
    rng = np.random.default_rng(seed)
    names, starts = [], torch.zeros(n, height, width, dtype=torch.bool)
    for i in range(n):
        if i < len(NAMED_REGIONS):
            name = NAMED_REGIONS[i]
            row, col = corners[name]
        else:
            row, col = (int(v) for v in rng.integers(0, (height - side + 1, width - side + 1)))
            name = f"random ({row}, {col})"
        names.append(name)
        starts[i, row : row + side, col : col + side] = True
    return names, starts


@dataclass(eq=False)  # compared by identity: the arrays have no single truth value
class Candidate:
    """One synthesised trigger of the flagged class."""

    start: str  # "sweep" (the all-class synthesis) or the region a restart began in
    mask: np.ndarray  # (H, W)
    pattern: np.ndarray  # (C, H, W)
    l1: float
    asr: float  # attack success on the synthesis set
    reached: bool

    @classmethod
    def of(cls, res: SynthResult, i: int, start: str) -> Candidate:
        """Entry i of a synthesis result."""
        return cls(
            start,
            res.masks[i],
            res.patterns[i],
            float(res.l1[i]),
            float(res.asr[i]),
            bool(res.reached[i]),
        )


def candidates(
    model: nn.Module,
    x: torch.Tensor,
    k: int,
    num_classes: int,
    sweep: SynthResult,
    cfg: SynthConfig,
    restarts: int,
    progress: bool = True,
) -> list[Candidate]:
    """Class k's trigger from the sweep, then from `restarts` new starts (all run in one batch),
    smallest reached L1 first (unreached ones last)."""
    out = [Candidate.of(sweep, k, "sweep")]
    if restarts > 0:
        names, starts = start_regions(restarts, *x.shape[-2:], seed=cfg.seed)
        res = synthesize(model, x, num_classes, cfg, [k] * restarts, progress, starts)
        out += [Candidate.of(res, i, name) for i, name in enumerate(names)]
    return sorted(out, key=lambda c: (not c.reached, c.l1))


def kept(cands: list[Candidate], keep_factor: float) -> list[Candidate]:
    """The candidates to unlearn: those that reached the target with L1 <= keep_factor times the
    smallest reached L1; the best one alone when none reached it."""
    reached = [c for c in cands if c.reached]
    if not reached:
        return cands[:1]
    return [c for c in reached if c.l1 <= keep_factor * reached[0].l1]


def stack(cands: list[Candidate]) -> tuple[np.ndarray, np.ndarray]:
    """(masks (T, H, W), patterns (T, C, H, W)) of the candidates, in their order."""
    return np.stack([c.mask for c in cands]), np.stack([c.pattern for c in cands])


def unlearned_triggers(npz, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(masks (T, H, W), patterns (T, C, H, W)) that an audit's triggers.npz says were unlearned
    for class k, smallest first: its `repair_*` arrays (training.inversion.render.write_report), or
    for an audit made before restarts the class's sweep trigger alone."""
    if "repair_masks" in npz:
        return npz["repair_masks"], npz["repair_patterns"]
    return npz["masks"][k : k + 1], npz["patterns"][k : k + 1]
