"""Pure helpers of training.audit on tiny hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.audit.tune import choose
from training.inversion.anomaly import MAD_CONSISTENCY, anomaly_index, flagged_classes
from training.inversion.data import audit_split
from training.inversion.identify import iou, mask_iou, neuron_overlap, trigger_pixels
from training.inversion.synthesis import apply_trigger, stamp_all
from training.inversion.unlearn import UnlearnConfig, unlearning_set


def test_apply_trigger_zero_one_and_half_masks() -> None:
    x = torch.full((2, 1, 3, 3), 0.2)  # (N, C, H, W)
    pattern = torch.full((1, 3, 3), 0.8)  # (C, H, W)
    zero, one = torch.zeros(3, 3), torch.ones(3, 3)
    assert torch.equal(apply_trigger(x, zero, pattern), x)
    assert torch.allclose(apply_trigger(x, one, pattern), pattern.expand_as(x))
    half = torch.zeros(3, 3)
    half[0, 0] = 0.5
    out = apply_trigger(x, half, pattern)
    assert out[0, 0, 0, 0].item() == pytest.approx(0.5)  # 0.5 * 0.2 + 0.5 * 0.8
    assert out[1, 0, 2, 2].item() == pytest.approx(0.2)


def test_apply_trigger_mask_is_shared_across_channels() -> None:
    x = torch.zeros(1, 3, 2, 2)
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    pattern = torch.stack([torch.full((2, 2), v) for v in (0.1, 0.5, 0.9)])  # (3, 2, 2)
    out = apply_trigger(x, mask, pattern)
    assert out[0, :, 0, 0].tolist() == pytest.approx([0.1, 0.5, 0.9])
    assert out[0, :, 1, 1].tolist() == [0.0, 0.0, 0.0]


def test_stamp_all_is_class_major() -> None:
    x = torch.rand(4, 1, 2, 2)
    masks = torch.stack([torch.zeros(2, 2), torch.ones(2, 2)])  # (K=2, H, W)
    patterns = torch.full((2, 1, 2, 2), 0.5)
    out = stamp_all(x, masks, patterns)  # (K * B, C, H, W)
    assert out.shape == (8, 1, 2, 2)
    assert torch.equal(out[:4], x)  # class 0: empty mask
    assert torch.allclose(out[4:], torch.full((4, 1, 2, 2), 0.5))


def test_anomaly_index_hand_made_norms() -> None:
    norms = np.array([10.0, 100, 102, 98, 101, 99, 100, 103, 97, 100])
    # median 100; |deviations| sorted 0 0 0 1 1 2 2 3 3 90 -> MAD 1.5
    idx = anomaly_index(norms)
    assert MAD_CONSISTENCY == 1.4826
    assert idx[0] == pytest.approx(90 / (1.4826 * 1.5))
    assert idx[3] == pytest.approx(2 / (1.4826 * 1.5))
    assert idx[7] == pytest.approx(-3 / (1.4826 * 1.5))  # large side is negative
    assert flagged_classes(norms) == [0]


def test_anomaly_only_small_side_and_ties() -> None:
    big = np.array([10.0, 10, 11, 9, 10, 200])  # one huge mask: not a backdoor sign
    assert flagged_classes(big) == []
    assert flagged_classes(np.full(10, 5.0)) == []  # MAD 0: nothing stands out
    two = np.array([1.0, 2, 50, 52, 49, 51, 50, 48])
    assert flagged_classes(two) == [0, 1]  # most anomalous first


def test_trigger_pixels_and_iou() -> None:
    px = trigger_pixels(
        {"kind": "patch", "size": 2, "position": "bottom-right", "value": 1.0}, 4, 5
    )
    assert px.sum() == 4 and px[2:, 3:].all()
    mask = np.zeros((4, 5))
    mask[2:, 3:] = 0.9
    mask[0, 0] = 0.6  # one extra pixel
    r = mask_iou(mask, px)
    assert r["iou_at_0.5"] == pytest.approx(4 / 5)
    assert r["iou_top_k"] == pytest.approx(1.0)
    assert iou(np.zeros(3, bool), np.zeros(3, bool)) == 0.0


def test_neuron_overlap() -> None:
    a = torch.tensor([5.0, 4, 0, 0, 0, 0, 0, 0, 0, 0])
    b = torch.tensor([5.0, 0, 4, 0, 0, 0, 0, 0, 0, 0])
    r = neuron_overlap(a, b, share=0.2)  # top 2 neurons each: {0, 1} vs {0, 2}
    assert r["top_k"] == 2 and r["shared"] == 1
    assert r["jaccard"] == pytest.approx(1 / 3)
    assert r["cosine"] == pytest.approx(25 / 41)


def test_unlearning_set_shares_are_disjoint() -> None:
    idx, flag, which = unlearning_set(100, UnlearnConfig(clean_share=0.2, trigger_share=0.3))
    assert (~flag).sum() == 20 and flag.sum() == 30
    assert len(set(idx.tolist())) == 50
    assert not which.any()  # one trigger: every stamped image gets it
    same, _, which3 = unlearning_set(100, UnlearnConfig(clean_share=0.2, trigger_share=0.3), 3)
    assert np.array_equal(same, idx)  # more triggers do not change which images are drawn
    assert set(which3.tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="> 1"):
        unlearning_set(10, UnlearnConfig(clean_share=0.6, trigger_share=0.6))


def test_overview_table_sets_repair_beside_paper() -> None:
    from training.inversion.render import overview

    per_class = [{"anomaly_index": 3.5}, {"anomaly_index": -0.2}]
    before = {"clean_accuracy": 0.99, "real_asr": 1.0, "synth_asr": 0.98}
    rep = {
        "before": before,
        "pruning": {
            "clean_accuracy": 0.9,
            "real_asr": 0.3,
            "neurons_pruned": 60,
            "layer_width": 200,
        },
        "unlearning": {
            "clean_accuracy": 0.985,
            "real_asr": 0.01,
            "config": {"lr": 0.001, "dilate": 2},
        },
    }
    demo = {
        "dataset": "mnist",
        "model_set": "models/mnist",
        "wall_seconds": 400,
        "summary": {
            "flagged": True,
            "target_classes": [0],
            "true_target_class": 0,
            "per_class": per_class,
            "repair": rep,
        },
    }
    clean = {
        "dataset": "mnist",
        "model_set": "models/mnist-clean",
        "wall_seconds": 300,
        "summary": {"flagged": False, "target_classes": [], "per_class": per_class, "repair": None},
    }
    text = overview([demo, clean])
    assert "| mnist | `models/mnist-clean` | False | - | none (clean) | 3.50 | 300 s |" in text
    assert (
        "| 0.990 / 1.000 | 0.900 / 0.300 (60/200 neurons) | 0.985 / 0.010 | 0.001 constant, 2 px "
        "| holds |"
    ) in text
    assert "| mnist | paper, Table 3 | 0.870 / 0.999 | 0.784 / 0.030 | 0.856 / 0.036 |" in text


def test_unlearning_goal_says_what_misses_and_by_how_much() -> None:
    from training.inversion.render import unlearning_goal

    before = {"clean_accuracy": 0.9163}
    assert unlearning_goal(before, {"clean_accuracy": 0.9100, "real_asr": 0.02}) == "holds"
    assert unlearning_goal(before, {"clean_accuracy": 0.9030, "real_asr": 0.0181}) == (
        "misses: acc. drop 0.013, 0.003 over"
    )
    assert unlearning_goal(before, {"clean_accuracy": 0.95, "real_asr": 0.05}) == (
        "misses: attack 0.0300 over"
    )
    after = {"clean_accuracy": 0.9095, "real_asr": 0.0202, "clean_to_target": 0.015}
    assert unlearning_goal(before, after) == (
        "misses: attack 0.0002 over (clean images sent to the target: 0.015)"
    )


def test_dilate_mask() -> None:
    from training.inversion.unlearn import dilate_mask

    mask = torch.zeros(5, 5)
    mask[2, 2] = 0.7
    assert torch.equal(dilate_mask(mask, 0), mask)
    grown = dilate_mask(mask, 1)
    assert torch.allclose(grown[1:4, 1:4], torch.full((3, 3), 0.7))
    assert grown.sum().item() == pytest.approx(9 * 0.7)


def test_audit_split_keeps_synthesis_tuning_and_training_apart():
    manifest = {"training": {"validation_split": {"n": 50}, "seed": 3}}
    s = audit_split(200, manifest, n_synth=20, seed=0)
    assert (len(s.synth), len(s.tune), len(s.pool)) == (20, 30, 150)
    assert not set(s.synth) & set(s.tune)
    assert not (set(s.synth) | set(s.tune)) & set(s.pool)
    # A user's set (no validation split recorded): disjoint random draws.
    u = audit_split(200, {}, n_synth=20, seed=0, n_tune=30)
    assert sorted(np.concatenate([u.synth, u.tune, u.pool]).tolist()) == list(range(200))


def test_tuning_rule_prefers_low_attack_success_within_the_accuracy_budget():
    rows = [
        {"lr": 1e-3, "dilate": 2, "accuracy": 0.950, "real_asr": 0.00},  # too inaccurate
        {"lr": 5e-4, "dilate": 1, "accuracy": 0.987, "real_asr": 0.02},
        {"lr": 2.5e-4, "dilate": 3, "accuracy": 0.990, "real_asr": 0.02},  # tie: smaller lr wins
        {"lr": 2.5e-4, "dilate": 0, "accuracy": 0.991, "real_asr": 0.40},
    ]
    assert choose(rows, before_accuracy=0.99, max_drop=0.005) is rows[2]
    # Nothing within budget: the most accurate setting.
    assert choose(rows, before_accuracy=1.0, max_drop=0.001) is rows[3]


def test_tuning_reuses_an_earlier_grid_only_for_the_same_setting(tmp_path) -> None:
    import json

    from training.audit.tune import earlier_rows
    from training.inversion.unlearn import UnlearnConfig

    base = UnlearnConfig(seed=0)
    row = {"lr": 0.001, "dilate": 2, "accuracy": 0.98, "real_asr": 0.01, "synth_asr": 0.0}
    path = tmp_path / "set.json"
    l1 = [6.5, 11.8]
    assert earlier_rows(path, 0, base, 4000, l1) == {}  # nothing ran before
    old = {
        "class": 0,
        "unlearn_base": base.to_dict(),
        "tune_images": 4000,
        "trigger_l1": l1,
        "grid": [row],
    }
    path.write_text(json.dumps(old))
    assert earlier_rows(path, 0, base, 4000, l1) == {(0.001, 2, "constant"): row}
    assert earlier_rows(path, 1, base, 4000, l1) == {}  # another class
    assert earlier_rows(path, 0, UnlearnConfig(seed=1), 4000, l1) == {}  # another seed
    # The base's lr, dilate and schedule do not matter: every row sets its own.
    other = UnlearnConfig(seed=0, lr=5e-4, dilate=0, schedule="cosine")
    assert earlier_rows(path, 0, other, 4000, l1) == {(0.001, 2, "constant"): row}
    assert earlier_rows(path, 0, base, 3000, l1) == {}  # other tuning images
    assert earlier_rows(path, 0, base, 4000, [6.5]) == {}  # other unlearned triggers
    del old["trigger_l1"]  # a grid from before restarts: its triggers are unknown
    path.write_text(json.dumps(old))
    assert earlier_rows(path, 0, base, 4000, l1) == {}


def test_cosine_unlearning_decays_the_learning_rate_to_zero() -> None:
    from training.inversion.unlearn import lr_factor, unlearn

    assert [lr_factor(k, 10, "constant") for k in (0, 5, 10)] == [1.0, 1.0, 1.0]
    assert [lr_factor(k, 10, "cosine") for k in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    assert lr_factor(12, 10, "cosine") == pytest.approx(0.0)  # never negative past the end
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    images, labels = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    with pytest.raises(ValueError, match="unknown schedule"):
        unlearn(net, images, labels, torch.zeros(4, 4), torch.zeros(1, 4, 4),
                UnlearnConfig(schedule="step"), progress=False)  # fmt: skip
