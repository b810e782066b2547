"""A model audit's synthesised triggers as de-trigger AE training triggers (issue 6, item 6).

`python -m training.audit` synthesises, for every class, the smallest (mask, pattern) that sends
clean images to it, and flags the classes whose mask is anomalously small: those masks are the
model's own backdoor as far as the audit can see it. Adding them to the AE's training triggers
joins the two defences: the AE learns to remove what the audit found, whatever the trigger family.

Only the flagged classes' triggers are used; for the class the audit repaired, every trigger it
unlearned (its restarts, training.inversion.restarts). The others are large masks over real class
features (a digit's strokes); teaching the AE to redraw those would make it change clean images,
which is the false positive the AE exists to avoid. The masks are grown by `dilate` pixels (as
for unlearning, training.inversion.unlearn): a synthesised mask is a minimal part of the real
trigger.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from training.inversion.restarts import unlearned_triggers
from training.inversion.unlearn import dilate_mask

MASK_TAU = 0.02  # a pixel moved by more than this is in the AE's mask target (as for blends)


@dataclass(frozen=True)
class SynthesisedTriggers:
    classes: tuple[int, ...]  # each row's flagged class (a class may have several triggers)
    masks: torch.Tensor  # (K, 1, H, W) in [0, 1], grown
    patterns: torch.Tensor  # (K, C, H, W) in [0, 1]

    def sha256(self) -> str:
        """A fingerprint of the triggers themselves: an AE checkpoint records it, so that a new
        audit in the same folder is not mistaken for the one the AE was trained with."""
        h = hashlib.sha256(repr(self.classes).encode())
        for t in (self.masks, self.patterns):
            h.update(t.numpy().tobytes())
        return h.hexdigest()


@lru_cache(maxsize=8)
def load_synthesised(audit_dir: str, dilate: int) -> SynthesisedTriggers:
    """The flagged classes' triggers of the audit in ``audit_dir`` (its audit.json and
    triggers.npz). An audit that flagged nothing has nothing to add: ValueError."""
    folder = Path(audit_dir)
    for name in ("audit.json", "triggers.npz"):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder / name} not found: run `python -m training.audit` for that model set "
                "first (it writes reports/audit/<dataset>/<set>/)"
            )
    summary = json.loads((folder / "audit.json").read_text())["summary"]
    classes = tuple(int(k) for k in summary["target_classes"])
    if not classes:
        raise ValueError(f"the audit in {folder} flagged no class: there is no trigger to add")
    npz = np.load(folder / "triggers.npz")
    rows = [(k, npz["masks"][k], npz["patterns"][k]) for k in classes]
    if "repair_masks" in npz:  # the restarts' triggers replace the sweep's for that class
        k = int(summary["identification"]["class"])
        rows = [r for r in rows if r[0] != k] + [
            (k, m, p) for m, p in zip(*unlearned_triggers(npz, k), strict=True)
        ]
    masks = torch.stack([dilate_mask(torch.from_numpy(m).float(), dilate) for _, m, _ in rows])
    patterns = torch.from_numpy(np.stack([p for _, _, p in rows])).float()
    return SynthesisedTriggers(tuple(k for k, _, _ in rows), masks[:, None], patterns)


def stamp_synthesised(
    x: torch.Tensor, triggers: SynthesisedTriggers, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(triggered images, mask target): each image of x (B, C, H, W) in [0, 1] gets one of the
    triggers, drawn uniformly, as (1 - m) * x + m * T. The mask target (B, 1, H, W) marks the
    pixels moved by more than MASK_TAU."""
    if tuple(triggers.patterns.shape[1:]) != tuple(x.shape[1:]):
        raise ValueError(
            f"synthesised triggers are {tuple(triggers.patterns.shape[1:])}, images "
            f"{tuple(x.shape[1:])}: the audit was made for another dataset"
        )
    pick = torch.from_numpy(rng.integers(0, len(triggers.classes), len(x)))
    m, t = triggers.masks[pick], triggers.patterns[pick]  # (B, 1, H, W), (B, C, H, W)
    out = (1.0 - m) * x + m * t
    moved = (out - x).abs().amax(1, keepdim=True) > MASK_TAU
    return out, moved.float()
