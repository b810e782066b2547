"""The audit's synthesised triggers as AE training triggers (issue 6, item 6)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training.config import AEConfig, run_name
from training.fit.autoencoder import ae_batch, train_autoencoder
from training.inversion.synthesised import MASK_TAU, load_synthesised, stamp_synthesised

SIDE = 8


def write_audit(folder, flagged: list[int]) -> str:
    """An audit folder as training.audit writes it, for 4 classes of 1x8x8 images: class k's mask
    is one pixel at (k, k), its pattern all k / 4."""
    folder.mkdir(parents=True, exist_ok=True)
    masks = np.zeros((4, SIDE, SIDE), np.float32)
    for k in range(4):
        masks[k, k, k] = 1.0
    patterns = np.stack([np.full((1, SIDE, SIDE), k / 4, np.float32) for k in range(4)])
    np.savez(folder / "triggers.npz", masks=masks, patterns=patterns)
    summary = {"flagged": bool(flagged), "target_classes": flagged}
    (folder / "audit.json").write_text(json.dumps({"summary": summary}))
    return str(folder)


def test_only_the_flagged_classes_are_loaded_with_masks_grown(tmp_path):
    trig = load_synthesised(write_audit(tmp_path / "a", [1, 3]), 1)
    assert trig.classes == (1, 3)
    assert trig.masks.shape == (2, 1, SIDE, SIDE) and trig.patterns.shape == (2, 1, SIDE, SIDE)
    # One pixel grown by 1: a 3x3 square around (1, 1), and around (3, 3).
    assert trig.masks[0, 0, 0:3, 0:3].eq(1).all() and trig.masks[0].sum() == 9
    assert trig.masks[1, 0, 2:5, 2:5].eq(1).all() and trig.masks[1].sum() == 9
    assert torch.allclose(trig.patterns[1], torch.full((1, SIDE, SIDE), 0.75))


def test_the_repaired_class_brings_every_trigger_the_audit_unlearned(tmp_path):
    folder = tmp_path / "a"
    write_audit(folder, [1, 3])
    npz = dict(np.load(folder / "triggers.npz"))
    repair = np.zeros((2, SIDE, SIDE), np.float32)
    repair[0, 7, 7] = repair[1, 0, 7] = 1.0  # two restarts' triggers of class 1
    np.savez(
        folder / "triggers.npz",
        **npz,
        repair_masks=repair,
        repair_patterns=np.full((2, 1, SIDE, SIDE), 0.9, np.float32),
    )
    summary = {"flagged": True, "target_classes": [1, 3], "identification": {"class": 1}}
    (folder / "audit.json").write_text(json.dumps({"summary": summary}))
    trig = load_synthesised(str(folder), 0)
    assert trig.classes == (3, 1, 1)  # class 1's sweep trigger replaced by its two restarts'
    assert (
        trig.masks[0, 0, 3, 3] == 1 and trig.masks[1, 0, 7, 7] == 1 and trig.masks[2, 0, 0, 7] == 1
    )
    assert torch.allclose(trig.patterns[1:], torch.full((2, 1, SIDE, SIDE), 0.9))


def test_an_audit_that_flagged_nothing_or_is_missing_is_refused(tmp_path):
    with pytest.raises(ValueError, match="flagged no class"):
        load_synthesised(write_audit(tmp_path / "clean", []), 2)
    with pytest.raises(FileNotFoundError, match="training.audit"):
        load_synthesised(str(tmp_path / "nowhere"), 2)


def test_stamping_blends_the_pattern_in_under_the_mask_and_marks_moved_pixels(tmp_path):
    trig = load_synthesised(write_audit(tmp_path / "a", [3]), 0)
    x = torch.zeros(5, 1, SIDE, SIDE)
    x[:, 0, 3, 3] = 0.74  # image 0..4: the trigger pixel already near its pattern value 0.75
    x[0, 0, 3, 3] = 0.0
    out, moved = stamp_synthesised(x, trig, np.random.default_rng(0))
    assert torch.allclose(out[:, 0, 3, 3], torch.full((5,), 0.75))
    assert torch.equal(out[:, :, :3], x[:, :, :3])  # nothing else changes
    # Moved by 0.75 on image 0, by 0.01 (< MASK_TAU) on the others: only image 0 is marked.
    assert MASK_TAU > 0.01
    assert moved[:, 0, 3, 3].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0] and moved.sum() == 1
    with pytest.raises(ValueError, match="another dataset"):
        stamp_synthesised(torch.zeros(2, 3, SIDE, SIDE), trig, np.random.default_rng(0))


def test_ae_batch_mixes_synthesised_triggers_into_the_corner_ones(tmp_path):
    audit = write_audit(tmp_path / "a", [3])
    clean = torch.full((400, 1, SIDE, SIDE), 0.5)
    cfg = AEConfig(trigger_size=2, synthesised=audit, synthesised_share=0.5, synthesised_dilate=0)
    x, target, changed = ae_batch(clean, cfg, np.random.default_rng(0))
    assert torch.equal(target, clean)
    synth = (x[:, 0, 3, 3] == 0.75) & (changed.sum((1, 2, 3)) == 1)
    corner = changed.sum((1, 2, 3)) == 4  # a 2x2 white square
    untouched = torch.eq(x, clean).flatten(1).all(1)
    assert (synth | corner | untouched).all()
    # Half the images are triggered, half of those with the synthesised trigger.
    assert 70 < synth.sum() < 130 and 70 < corner.sum() < 130 and 160 < untouched.sum() < 240
    assert torch.equal(changed[untouched], torch.zeros_like(changed[untouched]))


def test_triggers_none_uses_only_the_synthesised_ones(tmp_path):
    audit = write_audit(tmp_path / "a", [3])
    clean = torch.full((200, 1, SIDE, SIDE), 0.5)
    cfg = AEConfig(triggers="none", synthesised=audit, synthesised_dilate=0)
    x, _, changed = ae_batch(clean, cfg, np.random.default_rng(0))
    triggered = ~torch.eq(x, clean).flatten(1).all(1)
    assert (x[triggered, 0, 3, 3] == 0.75).all() and (changed[triggered].sum((1, 2, 3)) == 1).all()
    assert 70 < triggered.sum() < 130
    with pytest.raises(ValueError, match="need synthesised"):
        ae_batch(clean, AEConfig(triggers="none"), np.random.default_rng(0))


def test_run_names_keep_the_old_ones_and_tell_the_synthesised_ones_apart():
    assert run_name(AEConfig(arch="conv")) == "conv"
    assert run_name(AEConfig(arch="conv", triggers="random")) == "conv_random"
    synth = "reports/audit/mnist/mnist"
    assert run_name(AEConfig(arch="conv", synthesised=synth)) == "conv_synth-mnist"
    assert run_name(AEConfig(arch="conv", triggers="none", synthesised=synth)) == (
        "conv_none_synth-mnist"
    )


def test_joint_arms_map_to_ae_configs():
    from training.audit.joint import arm_config

    base = AEConfig(arch="conv", epochs=1)
    audit = "reports/audit/mnist/mnist"
    assert arm_config(base, "corner", audit) == base  # the shipped AE's config: reused
    assert arm_config(base, "corner+synth", audit).synthesised == audit
    none = arm_config(base, "none+synth", audit)
    assert (none.triggers, none.synthesised, none.epochs) == ("none", audit, 1)
    with pytest.raises(ValueError, match="unknown arm"):
        arm_config(base, "random+blur", audit)


def test_an_ae_checkpoint_is_not_reused_once_the_audit_found_other_triggers(tmp_path):
    audit = write_audit(tmp_path / "a", [3])
    images = np.full((64, 1, SIDE, SIDE), 128, np.uint8)
    cfg = AEConfig(
        arch="conv", epochs=1, batch_size=32, width=4, threads=1, synthesised=audit,
        synthesised_dilate=0,
    )  # fmt: skip
    logs: list[str] = []
    train_autoencoder(cfg, images, tmp_path / "run", logs.append)
    train_autoencoder(cfg, images, tmp_path / "run", logs.append)
    assert any("resuming" in m for m in logs)  # same audit: the finished AE is reloaded
    write_audit(tmp_path / "a", [1])  # a new audit in the same folder, another trigger
    load_synthesised.cache_clear()
    logs.clear()
    train_autoencoder(cfg, images, tmp_path / "run", logs.append)
    assert any("another config" in m for m in logs) and not any("resuming" in m for m in logs)
