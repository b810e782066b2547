"""Restarts of a flagged class's trigger search (training.inversion.restarts) and unlearning several
triggers at once, on tiny hand-made arrays."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from training.inversion.restarts import Candidate, kept, start_regions
from training.inversion.synthesis import SynthConfig, synthesize
from training.inversion.unlearn import UnlearnConfig, unlearn


def test_start_regions_are_the_corners_the_centre_then_random_places() -> None:
    names, starts = start_regions(7, 8, 12, seed=0)
    assert names[:5] == ["top-left", "top-right", "bottom-left", "bottom-right", "centre"]
    assert starts.shape == (7, 8, 12) and starts.dtype == torch.bool
    assert all(int(s.sum()) == 4 for s in starts)  # 2x2: a quarter of the shorter side
    assert starts[0, :2, :2].all() and starts[1, :2, 10:].all()
    assert starts[2, 6:, :2].all() and starts[3, 6:, 10:].all() and starts[4, 3:5, 5:7].all()
    assert names[5].startswith("random (") and names[6].startswith("random (")
    again, same = start_regions(7, 8, 12, seed=0)
    assert again == names and torch.equal(same, starts)  # seeded


def _cand(l1: float, reached: bool = True) -> Candidate:
    return Candidate(
        "x", np.zeros((2, 2)), np.zeros((1, 2, 2)), l1, 1.0 if reached else 0.5, reached
    )


def test_kept_are_the_reached_triggers_up_to_the_factor() -> None:
    small, mid, big, unreached = _cand(6.0), _cand(11.9), _cand(12.1), _cand(1.0, False)
    assert kept([small, mid, big, unreached], 2.0) == [small, mid]
    assert kept([small, mid, big], 1.0) == [small]
    # None reached the target: the best try alone (candidates come sorted, unreached last).
    assert kept([unreached, _cand(3.0, False)], 2.0) == [unreached]


def test_a_start_region_begins_the_mask_half_on_there() -> None:
    """With no steps to run, the returned (last) mask is the starting one."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    x = torch.rand(8, 1, 4, 4)
    start = torch.zeros(2, 4, 4, dtype=torch.bool)
    start[1, :2, :2] = True
    res = synthesize(model, x, 2, SynthConfig(steps=0), [0, 0], progress=False, start=start)
    assert res.masks.shape == (2, 4, 4)
    assert res.masks[0].max() < 0.05  # the sweep's start: near 0 everywhere
    assert np.allclose(res.masks[1, :2, :2], 0.5, atol=0.1) and res.masks[1, 2:].max() < 0.05


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


def test_unlearning_one_trigger_is_the_same_given_flat_or_stacked() -> None:
    images = torch.randint(0, 256, (60, 1, 4, 4), dtype=torch.uint8)
    labels = torch.randint(0, 3, (60,))
    mask, pattern = torch.zeros(4, 4), torch.ones(1, 4, 4)
    mask[0, 0] = 1.0
    cfg = UnlearnConfig(lr=1e-2, batch_size=8, clean_share=0.4, trigger_share=0.4, dilate=0)
    a, b = _tiny(), _tiny()
    unlearn(a, images, labels, mask, pattern, cfg, progress=False)
    unlearn(b, images, labels, mask[None], pattern[None], cfg, progress=False)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_unlearning_several_triggers_stamps_each_image_with_one_of_them() -> None:
    seen: list[torch.Tensor] = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.detach().clone())
            return self.lin(x.flatten(1))

    images = torch.zeros(50, 1, 4, 4, dtype=torch.uint8)  # black: a stamped pixel shows as 1
    masks = torch.zeros(2, 4, 4)
    masks[0, 0, 0] = masks[1, 3, 3] = 1.0
    cfg = UnlearnConfig(clean_share=0.2, trigger_share=0.8, batch_size=50, dilate=0)
    unlearn(Spy(), images, torch.zeros(50, dtype=torch.long), masks, torch.ones(2, 1, 4, 4), cfg)
    x = seen[0][:, 0]  # (50, 4, 4)
    first, second = x[:, 0, 0] == 1, x[:, 3, 3] == 1
    assert not (first & second).any()  # one trigger per image
    assert int((first | second).sum()) == 40 and first.any() and second.any()
    assert x.sum() == 40  # nothing else is painted
    with pytest.raises(ValueError, match="2 masks but 1 patterns"):
        unlearn(copy.deepcopy(Spy()), images, torch.zeros(50), masks, torch.ones(1, 1, 4, 4), cfg)
