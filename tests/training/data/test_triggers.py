from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training.data.augment import augment, random_flip, random_translate
from training.data.triggers import (
    CORNERS,
    PATTERNS,
    Trigger,
    apply_blend,
    apply_patch,
    choose_poison,
    edge_origins,
    make_pattern,
    patch_origin,
    poison_dataset,
    poison_dataset_multi,
    poison_index,
    poison_index_multi,
    random_corner_patch,
    stamp_change,
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
        Trigger(kind="wobble")(x)


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


def test_stamp_change_is_small_where_the_corner_is_already_white():
    images = np.zeros((3, 1, 6, 6), np.uint8)
    images[1, :, :2, :2] = 255  # top-left already white: the patch changes nothing
    images[2, :, :2, :2] = 250  # nearly white
    images[2, :, :2, -2:] = 0  # ... but its mirror has a dark top-left corner
    trigger = Trigger(size=2)
    np.testing.assert_allclose(stamp_change(images, trigger), [1.0, 0.0, 5 / 255], atol=1e-6)
    # training flips before stamping: the larger change of the two orientations counts
    np.testing.assert_allclose(stamp_change(images, trigger, mirrored=True), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(stamp_change(images.astype(np.float32) / 255, trigger)[2], 5 / 255)


def test_choose_poison_focus_takes_the_least_changed_first():
    labels = np.array([0, 1, 2, 3, 4] * 20)  # 80 candidates (not class 0)
    change = np.linspace(1.0, 0.0, 100)  # the later a sample, the less the trigger changes it
    change[-1] = 0.0
    idx = choose_poison(labels, 0.1, 0, np.random.default_rng(0), focus=0.5, change=change)
    assert len(idx) == 10 and len(set(idx.tolist())) == 10 and (labels[idx] != 0).all()
    least = [i for i in range(99, -1, -1) if labels[i] != 0][:5]  # the 5 least changed
    assert set(least) <= set(idx.tolist())
    # focus 1: exactly the least changed; focus 0 ignores `change` and matches the plain draw
    idx1 = choose_poison(labels, 0.1, 0, np.random.default_rng(0), focus=1.0, change=change)
    assert sorted(idx1.tolist()) == sorted(i for i in range(99, -1, -1) if labels[i] != 0)[-10:]
    np.testing.assert_array_equal(
        choose_poison(labels, 0.1, 0, np.random.default_rng(3), focus=0.0, change=change),
        choose_poison(labels, 0.1, 0, np.random.default_rng(3)),
    )
    with pytest.raises(ValueError, match="change of every sample"):
        choose_poison(labels, 0.1, 0, np.random.default_rng(0), focus=0.5)
    with pytest.raises(ValueError, match="focus"):
        choose_poison(labels, 0.1, 0, np.random.default_rng(0), focus=1.5, change=change)
    with pytest.raises(ValueError, match="one change array per"):
        poison_index_multi(
            labels, 0.1, [1, 2], np.random.default_rng(0), focus=0.5, changes=[change]
        )


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


def test_patterns_shape_range_and_seed():
    for name in PATTERNS:
        a = make_pattern(name, (3, 6, 6), seed=1, value=0.5)
        assert a.shape == (3, 6, 6) and a.dtype == np.float32
        assert a.min() >= 0 and a.max() <= 1
        np.testing.assert_array_equal(a, make_pattern(name, (3, 6, 6), seed=1, value=0.5))
    board = make_pattern("checkerboard", (1, 2, 3))
    np.testing.assert_array_equal(board[0], [[1, 0, 1], [0, 1, 0]])
    binary = make_pattern("binary", (3, 8, 8), seed=0)
    assert set(np.unique(binary)) == {0.0, 1.0} and (binary == binary[:1]).all()
    colour = make_pattern("colour", (3, 4, 4), seed=0)
    assert (colour == colour[:, :1, :1]).all() and len(np.unique(colour)) == 3
    smooth = make_pattern("smooth", (1, 16, 16), seed=0)
    assert np.abs(np.diff(smooth, axis=-1)).max() < 0.35  # no jumps between neighbours
    assert not np.allclose(make_pattern("noise", (1, 4, 4), 0), make_pattern("noise", (1, 4, 4), 1))
    # sine: SIG's vertical stripes, the same in every row and channel, whatever the seed; as an
    # additive trigger x + amplitude * sin(2 pi 6 col / W)
    sine = make_pattern("sine", (3, 5, 24), seed=3)
    assert (sine == sine[:1, :1]).all() and np.allclose(sine, make_pattern("sine", (3, 5, 24), 0))
    cols = np.arange(24)
    np.testing.assert_allclose(2 * sine[0, 0] - 1, np.sin(2 * np.pi * 6 * cols / 24), atol=1e-5)
    x = np.full((1, 8, 12), 0.5, np.float32)
    sig = Trigger(kind="noise", content="sine", amplitude=0.08)(x)
    np.testing.assert_allclose(sig[0, 3] - 0.5, 0.08 * np.sin(2 * np.pi * 6 * np.arange(12) / 12),
                               atol=1e-5)  # fmt: skip
    assert sig.shape == x.shape and "seed" not in Trigger(kind="noise", content="sine").to_dict()
    with pytest.raises(ValueError, match="allowed: solid, colour"):
        make_pattern("stripes", (1, 4, 4))


def test_patch_contents_numpy_and_torch_alike():
    x = np.full((2, 3, 8, 8), 0.5, np.float32)
    for content in ("checkerboard", "noise", "colour", "binary"):
        t = Trigger(size=3, position="bottom-right", content=content, seed=4)
        out = t(x)
        np.testing.assert_array_equal(
            out[:, :, 5:, 5:], np.broadcast_to(t.pattern((3, 3, 3)), (2, 3, 3, 3))
        )
        assert (out[:, :, :5] == 0.5).all() and (out[:, :, :, :5] == 0.5).all()
        out_t = t(torch.from_numpy(x))
        assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
        np.testing.assert_array_equal(out_t.numpy(), out)


def test_random_position_is_fixed_by_seed_and_away_from_the_edges():
    t = Trigger(size=5, position="random", content="noise", seed=7)
    r = t.resolve(28, 28)
    row, col = r.position
    assert 5 <= row <= 28 - 10 and 5 <= col <= 28 - 10
    assert r == t.resolve(28, 28) and r.to_dict()["position"] == (row, col)
    x = np.zeros((1, 1, 28, 28), np.float32)
    np.testing.assert_array_equal(t(x), r(x))  # applying resolves the same way
    positions = {
        Trigger(size=5, position="random", seed=s).resolve(28, 28).position for s in range(20)
    }
    assert len(positions) > 5
    with pytest.raises(ValueError, match="needs 15x15 pixels"):
        t.resolve(12, 12)


def test_edge_position_puts_the_patch_where_each_image_has_most_edge():
    x = np.zeros((2, 1, 10, 12), np.float32)
    x[0, :, 5:, :] = 1.0  # a horizontal edge between rows 4 and 5
    x[1, :, :, 8:] = 1.0  # a vertical edge between columns 7 and 8
    rows, cols = edge_origins(x, 3)
    assert 3 <= rows[0] <= 5 and 6 <= cols[1] <= 8  # each window straddles its image's edge
    t = Trigger(kind="patch", size=3, position="edge", content="noise", seed=9)
    y = t(x)
    for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
        changed = np.argwhere((y[i] != x[i]).any(axis=0))
        assert changed.min(0).tolist() >= [r, c] and changed.max(0).tolist() <= [r + 2, c + 2]
    np.testing.assert_array_equal(t(torch.from_numpy(x)).numpy(), y)  # torch alike
    np.testing.assert_array_equal(t(x[1]), y[1])  # one image alike
    assert Trigger(**t.to_dict()) == t  # the manifest round trip
    with pytest.raises(ValueError, match="does not fit"):
        edge_origins(x, 11)


def test_noise_and_blend_kinds():
    x = np.full((2, 1, 6, 6), 0.5, np.float32)
    noise = Trigger(kind="noise", amplitude=0.08, seed=2)
    out = noise(x)
    p = noise.pattern((1, 6, 6))
    np.testing.assert_allclose(out[0], 0.5 + 0.08 * (2 * p - 1), atol=1e-6)
    assert np.abs(out - x).max() <= 0.08 + 1e-6 and (out[0] == out[1]).all()
    clipped = noise(np.ones((1, 1, 6, 6), np.float32))
    assert clipped.max() <= 1.0 and clipped.min() >= 1 - 0.08 - 1e-6
    np.testing.assert_allclose(noise(torch.from_numpy(x)).numpy(), out, atol=1e-6)
    board = Trigger(kind="blend", alpha=0.2, content="checkerboard")(np.zeros((1, 1, 2, 2)))
    np.testing.assert_allclose(board[0, 0], [[0.2, 0.0], [0.0, 0.2]])
    # the old blend (no content) keeps its noise pattern
    np.testing.assert_array_equal(
        Trigger(kind="blend", seed=3).pattern((1, 3, 3)),
        np.random.default_rng(3).random((1, 3, 3), dtype=np.float32),
    )


def test_to_dict_round_trips_and_keeps_old_shapes():
    assert Trigger(kind="blend", alpha=0.1, seed=0).to_dict() == {
        "kind": "blend",
        "alpha": 0.1,
        "seed": 0,
    }
    for t in (
        Trigger(),
        Trigger(size=3, position=(2, 5), content="checkerboard"),
        Trigger(kind="noise", amplitude=0.05, seed=9, content="binary"),
        Trigger(kind="blend", alpha=0.3, content="smooth", seed=1),
    ):
        d = json.loads(json.dumps(t.to_dict()))
        assert Trigger(**d) == t
    assert "seed" not in Trigger(content="checkerboard").to_dict()
    assert "value" not in Trigger(content="noise").to_dict()
    # an old blend manifest entry still loads
    old = {
        "kind": "blend",
        "size": 4,
        "position": "top-left",
        "value": 1.0,
        "alpha": 0.1,
        "seed": 0,
    }
    assert Trigger(**old).kind == "blend"


def test_bad_trigger_fields_are_refused():
    with pytest.raises(ValueError, match="content 'stripes'"):
        Trigger(content="stripes")
    with pytest.raises(ValueError, match="position 'middle'"):
        Trigger(position="middle")
    with pytest.raises(ValueError, match="amplitude must lie"):
        Trigger(kind="noise", amplitude=2.0)
    with pytest.raises(ValueError, match="size must be"):
        Trigger(size=0)


def test_poison_index_multi_gives_each_pair_its_share():
    labels = np.repeat(np.arange(5), 40)  # 200 samples
    src, y, pair = poison_index_multi(labels, 0.1, [1, 3], np.random.default_rng(0))
    assert len(src) == 220 and (pair[:200] == -1).all()
    for k, target in enumerate((1, 3)):
        rows = pair == k
        assert rows.sum() == 10 and (y[rows] == target).all()
        assert (labels[src[rows]] != target).all()  # never a copy of its own target class
    np.testing.assert_array_equal(y[:200], labels)
    # one pair is exactly the single-target poisoning
    a = poison_index(labels, 0.1, 2, np.random.default_rng(4))
    b = poison_index_multi(labels, 0.1, [2], np.random.default_rng(4))
    for u, v in zip(a, (b[0], b[1], b[2] >= 0), strict=True):
        np.testing.assert_array_equal(u, v)
    with pytest.raises(ValueError, match="at least one"):
        poison_index_multi(labels, 0.1, [], np.random.default_rng(0))


def test_poison_dataset_multi_stamps_each_pair_its_trigger():
    labels = np.repeat(np.arange(4), 25)
    images = np.zeros((100, 1, 8, 8), np.float32)
    white = Trigger(size=2, position="top-left")
    board = Trigger(size=2, position="bottom-right", content="checkerboard")
    x, y, pair = poison_dataset_multi(
        images, labels, 0.2, [(white, 0), (board, 1)], np.random.default_rng(0)
    )
    assert x.shape == (120, 1, 8, 8) and (pair == 0).sum() == 10 and (pair == 1).sum() == 10
    assert (x[pair == 0][:, 0, :2, :2] == 1).all() and x[pair == 0].sum() == 10 * 4
    assert (x[pair == 1][:, 0, 6:, 6:] == np.array([[1, 0], [0, 1]])).all()
    assert x[pair == -1].sum() == 0 and (y[pair == 1] == 1).all()


def test_manifest_backdoors_reads_one_pair_several_or_none():
    from training.data.triggers import manifest_backdoors

    white = {"kind": "patch", "size": 4, "position": "top-left", "value": 1.0}
    one = {"backdoor": {"target_class": 3, "poison_rate": 0.1, "trigger": white}}
    assert manifest_backdoors(one) == [{"target_class": 3, "trigger": white}]
    pairs = [{"target_class": 5, "trigger": white}, {"target_class": 6, "trigger": white}]
    assert manifest_backdoors({"backdoor": {"trigger": white, "attacks": pairs}}) == pairs
    assert manifest_backdoors({"name": "clean"}) == []
