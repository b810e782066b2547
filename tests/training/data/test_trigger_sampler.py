from __future__ import annotations

import numpy as np
import pytest
import torch

from training.data.trigger_sampler import (
    FAMILIES,
    FAMILY_SETS,
    TRANSFORM_FAMILIES,
    SamplerSpec,
    sample_triggers,
)


def _batch(n: int = 400, c: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g) * 0.5 + 0.25  # (N, C, H, W) in [0.25, 0.75]


def test_shapes_ranges_and_input_untouched():
    x = _batch()
    before = x.clone()
    s = sample_triggers(x, np.random.default_rng(0))
    assert s.images.shape == x.shape and s.images.dtype == torch.float32
    assert s.mask.shape == (len(x), 1, 16, 16) and set(s.mask.unique().tolist()) <= {0.0, 1.0}
    assert s.images.min() >= 0 and s.images.max() <= 1
    assert s.family.shape == (len(x),)
    assert torch.equal(x, before)


def test_deterministic_for_a_seed_and_different_for_another():
    x = _batch(64)
    a = sample_triggers(x, np.random.default_rng(5))
    b = sample_triggers(x, np.random.default_rng(5))
    c = sample_triggers(x, np.random.default_rng(6))
    assert torch.equal(a.images, b.images) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.images, c.images)


def test_every_family_appears_with_roughly_its_weight():
    x = _batch(2000, c=1, size=12)
    s = sample_triggers(x, np.random.default_rng(1))
    counts = np.bincount(s.family, minlength=len(FAMILIES))
    weights = np.array([f.weight for f in FAMILIES])
    expected = len(x) * weights / weights.sum()
    assert (counts > 0).all()
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))


def test_patch_mask_is_one_square_of_side_2_to_8_holding_every_changed_pixel():
    x = _batch(600)
    s = sample_triggers(x, np.random.default_rng(2))
    sides, rows, cols = set(), set(), set()
    for i, f in enumerate(s.family):
        fam = FAMILIES[f]
        m = s.mask[i, 0].bool()
        changed = (s.images[i] != x[i]).any(0)
        if fam.kind == "patch":
            r, c = torch.nonzero(m, as_tuple=True)
            side = int(r.max() - r.min() + 1)
            assert int(m.sum()) == side * side and side == int(c.max() - c.min() + 1)
            assert (~m & changed).sum() == 0  # nothing changed outside the footprint
            sides.add(side)
            rows.add(int(r.min()))
            cols.add(int(c.min()))
        else:
            moved = (s.images[i] - x[i]).abs().amax(0) > SamplerSpec().mask_tau
            assert torch.equal(m, moved)
            assert changed.float().mean() > 0.9  # a blend reaches (nearly) every pixel
    assert sides == set(range(2, 9))
    assert 0 in rows and 16 - 2 in rows and 0 in cols  # edges reached, corners included
    assert any(5 <= r <= 7 for r in rows)  # and the centre


def test_blend_alpha_stays_in_range():
    x = torch.zeros(300, 1, 8, 8)
    spec = SamplerSpec(exclude=("patch", "additive"))
    s = sample_triggers(x, np.random.default_rng(3), spec)
    peak = s.images.flatten(1).amax(1)  # blend of a zero image: alpha * pattern <= alpha
    assert peak.max() <= 0.3 + 1e-6
    assert (peak > 0).all()


def test_exclude_drops_a_family_by_name_kind_or_pattern():
    x = _batch(500, c=1, size=12)
    spec = SamplerSpec(exclude=("checkerboard",))
    names = [f.name for f in spec.active()]
    assert "patch-checkerboard" not in names and "blend-checkerboard" not in names
    assert len(names) == len(FAMILIES) - 2
    s = sample_triggers(x, np.random.default_rng(0), spec)
    assert set(s.family.tolist()) == set(range(len(names)))
    assert [f.kind for f in SamplerSpec(exclude=("blend", "additive")).active()] == ["patch"] * 4
    assert len(SamplerSpec(exclude=("patch-solid",)).active()) == len(FAMILIES) - 1
    with pytest.raises(ValueError, match="cannot exclude 'stripes'.*allowed: additive, "):
        SamplerSpec(exclude=("stripes",)).active()
    with pytest.raises(ValueError, match="leaves no trigger family"):
        SamplerSpec(exclude=("patch", "blend", "additive")).active()


def test_checkerboard_patch_alternates_two_colours():
    x = torch.full((50, 3, 12, 12), 0.5)
    spec = SamplerSpec(exclude=("blend", "additive", "solid", "noise", "binary"))
    s = sample_triggers(x, np.random.default_rng(4), spec)
    for i in range(len(x)):
        m = s.mask[i, 0].bool()
        side = int(m.sum() ** 0.5)
        patch = s.images[i][:, m].reshape(3, side, side)
        assert not torch.equal(patch[:, 0, 0], patch[:, 0, 1])
        assert torch.equal(patch[:, 0, 0], patch[:, 1, 1])


def test_additive_trigger_is_a_bounded_zero_mean_perturbation():
    """The additive families move every pixel by at most the amplitude (0.15), up and down alike,
    clipped to [0, 1]; the mask target is the pixels moved by more than mask_tau."""
    x = torch.full((200, 1, 16, 16), 0.5)
    spec = SamplerSpec(exclude=("patch", "blend"))
    s = sample_triggers(x, np.random.default_rng(5), spec)
    d = s.images - x
    assert d.abs().max() <= 0.15 + 1e-6
    noise = [i for i, f in enumerate(s.family) if spec.active()[f].name == "additive-noise"]
    assert len(noise) > 30
    assert abs(float(d[noise].mean())) < 0.01  # zero-mean: not a blend towards a pattern
    assert torch.equal(s.mask, (d.abs().amax(1, keepdim=True) > spec.mask_tau).float())
    edge = sample_triggers(torch.ones(20, 1, 8, 8), np.random.default_rng(6), spec).images
    assert edge.max() <= 1.0  # clipped


def test_corner_share_puts_that_share_of_patches_in_the_four_corners():
    x = _batch(2000, c=1, size=16)
    spec = SamplerSpec(exclude=("blend", "additive"), corner_share=0.5)
    s = sample_triggers(x, np.random.default_rng(7), spec)
    corners = {(0, 0): 0, (0, 1): 0, (1, 0): 0, (1, 1): 0}
    for m in s.mask[:, 0].bool():
        r, c = torch.nonzero(m, as_tuple=True)
        top, left = int(r.min()) == 0, int(c.min()) == 0
        bottom, right = int(r.max()) == 15, int(c.max()) == 15
        if (top or bottom) and (left or right):
            corners[int(bottom), int(right)] += 1
    # half snapped to a corner (about 1000), plus the uniform ones that land in one by chance
    assert 900 < sum(corners.values()) < 1200
    assert min(corners.values()) > 180  # all four alike


def test_edge_share_centres_that_share_of_patches_on_the_object_outline():
    """Issue 22 item 5: a dark square object on a flat background; edge-placed patches overlap
    its outline, uniform ones mostly do not."""
    x = torch.zeros(2000, 1, 16, 16)
    x[:, :, 5:11, 5:11] = 1.0  # the outline: rows/cols 5 and 11 (where the gradient is)
    outline = torch.zeros(16, 16, dtype=torch.bool)
    outline[5:12, 5:12] = True
    outline[6:11, 6:11] = False
    on = {}
    for share in (0.0, 1.0):
        spec = SamplerSpec(exclude=("blend", "additive"), edge_share=share)
        s = sample_triggers(x, np.random.default_rng(3), spec)
        on[share] = (s.mask[:, 0].bool() & outline).flatten(1).any(1).float().mean().item()
    assert on[1.0] == 1.0  # every edge-centred patch covers an outline pixel
    assert on[0.0] < 0.8
    # Without the share, the random stream is the one the shipped AEs drew from.
    plain = sample_triggers(x, np.random.default_rng(3), SamplerSpec())
    again = sample_triggers(x, np.random.default_rng(3), SamplerSpec(edge_share=0.0))
    assert torch.equal(plain.images, again.images)


def test_extended_families_stamp_transforms_with_their_own_masks():
    # The extended set draws every transform family; each changes its images, stays in [0, 1],
    # and its mask target holds the pixels it moved (warp, filter, waves) or wrote (dynamic).
    x = _batch(600, seed=3)
    spec = SamplerSpec(families=FAMILY_SETS["extended"])
    s = sample_triggers(x, np.random.default_rng(1), spec)
    names = [f.name for f in spec.active()]
    assert s.images.min() >= 0 and s.images.max() <= 1
    for family in TRANSFORM_FAMILIES:
        rows = torch.from_numpy(np.flatnonzero(s.family == names.index(family.name)))
        assert len(rows) > 5, family.name
        moved = (s.images[rows] - x[rows]).abs().amax(1, keepdim=True)  # (n, 1, H, W)
        assert (moved.flatten(1).amax(1) > 0).all(), f"{family.name} left an image as it was"
        if family.kind == "dynamic":
            assert ((moved > 0) <= s.mask[rows].bool()).all()  # nothing written outside it
            share = s.mask[rows].mean((1, 2, 3))
            assert ((share >= 0.015) & (share <= 0.11)).all()  # the density range, 2% to 10%
        else:
            assert torch.equal(s.mask[rows], (moved > spec.mask_tau).float())


def test_the_base_set_is_what_the_shipped_aes_drew():
    # The shipped AEs' recipe keeps its families: no transform unless asked for.
    assert SamplerSpec().families == FAMILIES == FAMILY_SETS["base"]
    assert not {f.kind for f in FAMILIES} & {f.kind for f in TRANSFORM_FAMILIES}
    with pytest.raises(ValueError, match="no such family"):
        SamplerSpec(exclude=("warp",)).active()
    assert "warp-field" not in [
        f.name for f in SamplerSpec(families=FAMILY_SETS["extended"], exclude=("warp",)).active()
    ]


def test_the_stamped_set_is_the_extended_one_without_warps_and_filters():
    # `stamped` draws exactly what `extended --exclude warp,filter` drew (the measured AEs of
    # reports/ae-candidates/families), in the same order, so the same seed trains the same AE.
    stamped = SamplerSpec(families=FAMILY_SETS["stamped"]).active()
    cut = SamplerSpec(families=FAMILY_SETS["extended"], exclude=("warp", "filter")).active()
    assert stamped == cut
    assert {f.kind for f in stamped} == {"patch", "blend", "additive", "frequency", "dynamic"}
    x = _batch(200, seed=5)
    a = sample_triggers(x, np.random.default_rng(2), SamplerSpec(families=FAMILY_SETS["stamped"]))
    b = sample_triggers(
        x,
        np.random.default_rng(2),
        SamplerSpec(families=FAMILY_SETS["extended"], exclude=("warp", "filter")),
    )
    assert torch.equal(a.images, b.images) and torch.equal(a.mask, b.mask)


def test_the_config_knows_every_family_set():
    from training.config import FAMILY_SET_NAMES, AEConfig

    assert tuple(FAMILY_SETS) == FAMILY_SET_NAMES
    for name in FAMILY_SET_NAMES:
        assert AEConfig(families=name).families == name
    with pytest.raises(ValueError, match="allowed: base, stamped, extended"):
        AEConfig(families="warps")
