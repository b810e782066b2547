from __future__ import annotations

import numpy as np
import pytest
import torch

from training.augment import augment, random_flip, random_translate
from training.triggers import (
    CORNERS,
    Trigger,
    apply_blend,
    apply_patch,
    choose_poison,
    patch_origin,
    poison_dataset,
    poison_index,
    random_corner_patch,
)


def test_patch_in_each_corner():
    x = np.zeros((1, 6, 5), np.float32)
    expected_origin = {
        "top-left": (0, 0),
        "top-right": (0, 3),
        "bottom-left": (4, 0),
        "bottom-right": (4, 3),
    }
    for corner in CORNERS:
        out = apply_patch(x, size=2, position=corner, value=1.0)
        r, c = expected_origin[corner]
        want = np.zeros_like(x)
        want[:, r : r + 2, c : c + 2] = 1.0
        np.testing.assert_array_equal(out, want)
    assert x.sum() == 0  # input untouched


def test_patch_at_row_col_with_pattern_on_batch():
    x = np.full((2, 3, 4, 4), 0.5, np.float32)
    pattern = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)  # (size, size), all channels
    out = apply_patch(x, size=2, position=(1, 2), value=pattern)
    np.testing.assert_array_equal(out[:, :, 1:3, 2:4], np.broadcast_to(pattern, (2, 3, 2, 2)))
    assert (out[:, :, 0] == 0.5).all() and (out[:, :, :, :2] == 0.5).all()


def test_patch_on_torch_tensor_and_bad_positions():
    x = torch.zeros(3, 1, 8, 8)
    out = Trigger(size=4, position="top-left", value=1.0)(x)
    assert isinstance(out, torch.Tensor)
    assert out[:, :, :4, :4].min() == 1 and out.sum() == 3 * 16 and x.sum() == 0
    with pytest.raises(ValueError, match="top-left, top-right, bottom-left, bottom-right"):
        patch_origin("middle", 2, 8, 8)
    with pytest.raises(ValueError, match="does not fit"):
        patch_origin((6, 6), 4, 8, 8)


def test_blend():
    x = np.zeros((1, 2, 2))
    out = apply_blend(x, np.ones((1, 2, 2)), alpha=0.25)
    np.testing.assert_allclose(out, 0.25)
    with pytest.raises(ValueError):
        apply_blend(x, x, alpha=1.5)
    t = Trigger(kind="blend", alpha=0.5, seed=3)
    y = t(np.ones((2, 1, 3, 3), np.float32))
    p = t.pattern((1, 3, 3))
    np.testing.assert_allclose(y[0], 0.5 + 0.5 * p, rtol=1e-6)
    with pytest.raises(ValueError, match="patch, blend"):
        Trigger(kind="warp")(x)


def test_trigger_to_dict_matches_contract():
    assert Trigger().to_dict() == {"kind": "patch", "size": 4, "position": "top-left", "value": 1.0}


def test_random_corner_patch_hits_one_corner_per_image():
    x = np.zeros((40, 1, 8, 8), np.float32)
    out, corners = random_corner_patch(x, np.random.default_rng(0), size=2)
    assert set(corners.tolist()) == {0, 1, 2, 3}
    for img, k in zip(out, corners, strict=True):
        r, c = patch_origin(CORNERS[k], 2, 8, 8)
        assert img.sum() == 4 and img[0, r : r + 2, c : c + 2].min() == 1


def test_choose_poison_rate_and_no_target_class():
    labels = np.array([0, 1, 2, 3, 4] * 20)  # 100 samples, 20 of the target class 0
    idx = choose_poison(labels, 0.1, 0, np.random.default_rng(0))
    assert len(idx) == 10 and len(set(idx.tolist())) == 10
    assert (labels[idx] != 0).all()
    with pytest.raises(ValueError, match="cannot poison"):
        choose_poison(labels, 0.9, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        choose_poison(labels, -0.1, 0, np.random.default_rng(0))


def test_poison_index_and_dataset():
    labels = np.array([1, 2, 3, 1, 2, 3, 1, 2, 3, 0])
    src, y, flag = poison_index(labels, 0.2, 0, np.random.default_rng(1))
    assert len(src) == 12 and flag.sum() == 2 and (y[flag] == 0).all()
    np.testing.assert_array_equal(src[:10], np.arange(10))
    np.testing.assert_array_equal(y[:10], labels)
    images = np.zeros((10, 1, 5, 5), np.float32)
    px, py, pf = poison_dataset(images, labels, 0.2, 0, Trigger(size=2), np.random.default_rng(1))
    assert px.shape == (12, 1, 5, 5)
    assert px[pf][:, 0, :2, :2].min() == 1 and px[~pf].sum() == 0
    np.testing.assert_array_equal(py, y)


def test_flip_happens_before_the_trigger():
    # Augment then stamp: the trigger stays top-left even on flipped images.
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(16, 1, 6, 6)
    x[:, :, :, -1] = 0.5  # a right-edge marker shows which images were flipped
    flipped = random_flip(x, g)
    assert 0 < int((flipped[:, 0, 0, 0] == 0.5).sum()) < 16
    out = Trigger(size=2)(flipped)
    assert (out[:, :, :2, :2] == 1).all()


def test_translate_keeps_shape_and_content_range():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    out = random_translate(x, g, pad=2)
    assert out.shape == x.shape
    assert set(out.unique().tolist()) <= set(x.unique().tolist())
    with pytest.raises(ValueError, match="none, flip, translate, flip-translate"):
        augment(x, "rotate", g)
