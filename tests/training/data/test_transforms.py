"""The transform triggers (training/data/transforms.py) as fixed backdoor triggers: warps, photo
filters, frequency waves and input-specific patterns, on tiny arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training.data import transforms
from training.data.triggers import Trigger

KINDS = [
    Trigger(kind="warp", strength=1.5, grid=4, seed=5),
    Trigger(kind="filter", content="gamma", amplitude=0.3),
    Trigger(kind="filter", content="contrast", amplitude=0.3),
    Trigger(kind="filter", content="tint", amplitude=0.3, seed=2),
    Trigger(kind="filter", content="vignette", amplitude=0.6),
    Trigger(kind="frequency", amplitude=0.1, seed=6),
    Trigger(kind="dynamic", density=0.05, seed=8),
]


def _images(n: int = 6, c: int = 3, h: int = 20, w: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, c, h, w), dtype=np.float32)


@pytest.mark.parametrize("trigger", KINDS, ids=lambda t: f"{t.kind}-{t.pattern_name}")
def test_each_kind_changes_images_in_range_numpy_torch_and_one_image_alike(trigger):
    x = _images()
    y = trigger(x)
    assert y.shape == x.shape and y.dtype == np.float32
    assert y.min() >= 0 and y.max() <= 1 and np.abs(y - x).max() > 0.01
    assert np.array_equal(x, _images())  # input untouched
    assert np.allclose(trigger(torch.from_numpy(x)).numpy(), y, atol=1e-6)
    assert np.allclose(trigger(x[2]), y[2], atol=1e-6)  # one image as in a batch
    assert np.array_equal(trigger(x), y)  # fixed by its seed
    assert Trigger(**json.loads(json.dumps(trigger.to_dict()))) == trigger


def test_warp_moves_pixels_by_about_its_strength_and_keeps_a_flat_image():
    h = w = 32
    control = np.random.default_rng(0).uniform(-1, 1, (1, 2, 4, 4))
    field = transforms.warp_field(control, h, w, np.float32([1.5]))
    assert field.shape == (1, 2, h, w)
    assert 0.8 < np.abs(field).mean() < 1.6  # upsampling smooths the grid's mean of 1.5
    ramp = np.broadcast_to(np.arange(w, dtype=np.float32) / w, (1, 1, h, w)).copy()
    moved = transforms.warp(ramp, field)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))  # away from the clamped edge
    # a horizontal ramp resampled at col + d_col reads (col + d_col) / w
    assert np.allclose(moved[inner], (ramp + field[:, 1:2] / w)[inner], atol=1e-5)
    flat = np.full((1, 1, h, w), 0.3, np.float32)
    assert np.allclose(transforms.warp(flat, field), flat)


def test_filters_do_what_they_say():
    x = np.full((1, 1, 9, 9), 0.25, np.float32)
    a = np.float32([0.5])
    assert np.allclose(transforms.photo_filter(x, "gamma", a), 0.25**0.5)
    assert np.allclose(transforms.photo_filter(x, "contrast", a), 0.0)  # 0.5 + 2 * (-0.25)
    tint = transforms.photo_filter(
        np.full((1, 3, 2, 2), 0.5, np.float32), "tint", a, np.float32([[1, 0, -1]])
    )
    assert np.allclose(tint[0, :, 0, 0], [0.75, 0.5, 0.25])
    vig = transforms.photo_filter(x, "vignette", a)
    assert vig[0, 0, 4, 4] == pytest.approx(0.25) and vig[0, 0, 0, 0] == pytest.approx(0.125)
    with pytest.raises(ValueError, match="unknown filter 'sepia'"):
        transforms.photo_filter(x, "sepia", a)


def test_frequency_waves_are_mid_to_high_frequency_and_bounded():
    rng = np.random.default_rng(0)
    freqs = transforms.wave_frequencies(rng, 50, 3, 32, 32)
    assert (np.abs(freqs[..., 0]) >= 8).all() and (np.abs(freqs) <= 16).all()
    waves = transforms.wave_pattern(freqs, rng.uniform(0, 6.3, (50, 3)), 32, 32)
    assert np.allclose(np.abs(waves).max(axis=(1, 2)), 1.0)
    spectrum = np.abs(np.fft.fft2(waves[0]))
    spectrum[0, 0] = 0  # no constant part to speak of
    low = spectrum[:4, :4].sum() + spectrum[-3:, -3:].sum()
    assert low < 0.05 * spectrum.sum()  # the energy is away from the low frequencies


def test_dynamic_trigger_depends_on_the_image():
    # Input-specific: two images get patterns at different places, a given image always the
    # same one, and exactly the density's share of pixels is written.
    x = _images(2, h=32, w=32)
    trigger = Trigger(kind="dynamic", density=0.05, seed=8)
    y = trigger(x)
    written = np.abs(y - x).max(axis=1) > 0  # (2, H, W)
    assert 0.04 < written.mean() <= 0.05
    assert (written[0] != written[1]).mean() > 0.03  # not one fixed mask
    gen = transforms.Generator(np.random.default_rng(8), 3)
    _, mask = transforms.dynamic(x, gen, np.float32([0.05, 0.05]))
    assert mask.sum() == 2 * round(0.05 * 32 * 32)


def test_transform_fields_are_checked():
    with pytest.raises(ValueError, match="unknown content 'sepia' for a filter"):
        Trigger(kind="filter", content="sepia")
    with pytest.raises(ValueError, match="content 'noise' for a warp"):
        Trigger(kind="warp", content="noise")
    with pytest.raises(ValueError, match="strength must lie"):
        Trigger(kind="warp", strength=0.0)
    with pytest.raises(ValueError, match="grid must be"):
        Trigger(kind="warp", grid=1)
    with pytest.raises(ValueError, match="density must lie"):
        Trigger(kind="dynamic", density=0.9)
