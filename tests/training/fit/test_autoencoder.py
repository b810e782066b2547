"""The de-trigger AE's training loop (training/fit/autoencoder.py): its batches, masks and loss
on tiny images, and that a few steps learn to remove triggers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from training.config import AEConfig
from training.fit.autoencoder import (
    ae_batch,
    detrigger_loss,
    no_time_for_another,
    progress,
    train_autoencoder,
)
from training.nets.autoencoders import build_autoencoder


def test_ae_batch_mixes_triggered_and_untouched_images():
    clean = torch.zeros(200, 1, 8, 8)
    cfg = AEConfig(triggered_share=0.5, trigger_size=2)
    x, target, _ = ae_batch(clean, cfg, np.random.default_rng(0))
    assert torch.equal(target, clean)
    stamped = (x != clean).flatten(1).any(1)
    assert 70 < int(stamped.sum()) < 130  # about half
    assert ((x != clean).flatten(1).sum(1)[stamped] == 4).all()  # one 2x2 square each
    assert clean.sum() == 0  # input untouched


def test_conv_ae_learns_to_remove_corner_squares():
    # A few steps on tiny dark images: the mask loss teaches the AE where the squares are, so
    # the L2 error on triggered images drops well below leaving them as they are.
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = AEConfig(arch="conv", width=4, trigger_size=2, triggered_share=1.0)
    ae = build_autoencoder("conv", 1, 8, width=4)
    opt = torch.optim.Adam(ae.parameters(), lr=1e-2)
    clean = torch.rand(64, 1, 8, 8) * 0.3
    for _ in range(150):
        x, target, _ = ae_batch(clean, cfg, rng)
        loss = detrigger_loss(ae, x, target, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, target, _ = ae_batch(clean, cfg, rng)
    with torch.no_grad():
        err_ae = torch.mean((ae(x) - target) ** 2)
    err_identity = torch.mean((x - target) ** 2)
    assert err_ae < 0.2 * err_identity


def test_mlp_loss_is_plain_l2():
    torch.manual_seed(0)
    ae = build_autoencoder("mlp", 1, 8)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        want = torch.mean((ae(x) - x) ** 2)
        got = detrigger_loss(ae, x, x, AEConfig(arch="mlp"))
    assert torch.isclose(got, want)


def test_random_trigger_batch_gives_the_sampler_mask():
    clean = torch.full((300, 1, 12, 12), 0.5)
    # (additive triggers left out: a faint one moves no pixel past mask_tau, so its mask is empty)
    cfg = AEConfig(triggers="random", triggered_share=0.5, exclude=("additive",))
    x, target, changed = ae_batch(clean, cfg, np.random.default_rng(0))
    assert torch.equal(target, clean) and changed.shape == (300, 1, 12, 12)
    stamped = (x != clean).flatten(1).any(1)
    assert 110 < int(stamped.sum()) < 190
    assert changed[~stamped].sum() == 0  # untouched images: the mask stays shut
    assert (changed.flatten(1).sum(1)[stamped] >= 4).all()
    # corner mode: the mask is the changed pixels, as detrigger_loss has always computed it
    x, _, changed = ae_batch(clean, AEConfig(trigger_size=2), np.random.default_rng(0))
    assert torch.equal(changed, ((x - clean).abs().amax(1, keepdim=True) > 0).float())
    with pytest.raises(ValueError, match="allowed: corner, random"):
        ae_batch(clean, AEConfig(triggers="everything"), np.random.default_rng(0))


def test_random_trigger_batch_honours_exclude():
    clean = torch.zeros(400, 1, 12, 12)
    cfg = AEConfig(triggers="random", triggered_share=1.0, exclude=("patch", "additive"))
    x, _, changed = ae_batch(clean, cfg, np.random.default_rng(1))
    assert x.flatten(1).amax(1).max() <= 0.3 + 1e-6  # only blends (alpha <= 0.3) of a black image
    assert ((x > 0).flatten(1).float().mean(1) > 0.3).all()


def test_conv_ae_learns_to_remove_random_patches():
    # As the corner test: a few steps with random patches anywhere; the L2 error on triggered
    # images drops well below leaving them as they are, and clean images pass nearly unchanged.
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = AEConfig(arch="conv", width=8, triggers="random", exclude=("blend",))
    ae = build_autoencoder("conv", 1, 12, width=8)
    opt = torch.optim.Adam(ae.parameters(), lr=1e-2)
    clean = torch.rand(64, 1, 12, 12) * 0.3
    for _ in range(150):
        x, target, changed = ae_batch(clean, cfg, rng)
        loss = detrigger_loss(ae, x, target, cfg, changed)
        opt.zero_grad()
        loss.backward()
        opt.step()
    triggered = AEConfig(**{**cfg.__dict__, "triggered_share": 1.0})
    x, target, _ = ae_batch(clean, triggered, rng)
    with torch.no_grad():
        err_ae = torch.mean((ae(x) - target) ** 2)
        err_clean = torch.mean((ae(clean) - clean) ** 2)
    err_identity = torch.mean((x - target) ** 2)
    assert err_ae < 0.3 * err_identity
    assert err_clean < 0.1 * err_identity


def test_extended_fill_reaches_black_and_white_and_output_stays_in_range():
    """The sigmoid fill lives in (0, 1), so it can only approach black or white; the extended
    fill spans (-0.05, 1.05), reaching both with finite logits (the output is clipped to
    [0, 1], the model contract)."""
    torch.manual_seed(0)
    x = torch.rand(16, 1, 8, 8)
    fills = {}
    for fill in ("sigmoid", "extended"):
        ae = build_autoencoder("conv", 1, 8, width=4, fill=fill)
        for logit in (-8.0, 8.0):  # a confident fill: black, then white
            with torch.no_grad():
                ae.ae.head.bias[1:] = logit
                ae.ae.head.bias[:1] = 8.0  # the mask wide open: the output is the fill
                fills[fill, logit] = ae.ae.parts(x)[1]
                out = ae(x)
            assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float(fills["sigmoid", -8.0].min()) > 0.0 and float(fills["sigmoid", 8.0].max()) < 1.0
    assert -0.05 < float(fills["extended", -8.0].max()) < 0.0  # past black: clipped to 0
    assert 1.0 < float(fills["extended", 8.0].min()) < 1.05
    with pytest.raises(ValueError, match="unknown fill 'tanh'; allowed: sigmoid, extended"):
        build_autoencoder("conv", 1, 8, fill="tanh")


def test_residual_ae_leaves_full_image_triggers_to_its_bounded_correction():
    """With a residual, the mask target of a blend or additive trigger is empty (the correction
    undoes those) while a patch keeps its footprint; the correction starts at zero (the AE
    starts as the identity) and never exceeds its bound."""
    clean = torch.full((400, 1, 12, 12), 0.5)
    cfg = AEConfig(triggers="random", triggered_share=1.0, residual=0.35)
    x, _, changed = ae_batch(clean, cfg, np.random.default_rng(0))
    moved = (x != clean).flatten(1).float().mean(1)
    full = moved > 0.9  # blends and additive patterns reach (nearly) every pixel
    assert 50 < int(full.sum()) < 350
    assert changed[full].sum() == 0
    assert (changed[~full].flatten(1).sum(1) >= 4).all()  # patches: side 2..8

    torch.manual_seed(0)
    ae = build_autoencoder("conv", 1, 12, width=4, residual=0.35)
    with torch.no_grad():
        assert torch.equal(ae.ae.parts(x)[2], torch.zeros_like(x))
        ae.ae.head.bias[2:] = 50.0  # a saturated correction
        assert float(ae.ae.parts(x)[2].max()) <= 0.35
        out = ae(x)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_l2_weight_scales_only_the_l2_term_of_the_conv_loss():
    """`l2_weight` moves the balance between the L2 loss and the mask BCE: raising it by 2 adds
    exactly two more L2 terms and leaves the BCE as it was."""
    torch.manual_seed(0)
    ae = build_autoencoder("conv", 1, 8, width=4, residual=0.35)
    clean = torch.rand(6, 1, 8, 8)
    x = clean.clone()
    x[:, :, :2, :2] = 1.0
    with torch.no_grad():
        mse = torch.mean((ae.ae(x) - clean) ** 2)
        base = detrigger_loss(ae, x, clean, AEConfig(arch="conv", residual=0.35))
        heavy = detrigger_loss(ae, x, clean, AEConfig(arch="conv", residual=0.35, l2_weight=3.0))
    assert float(mse) > 0
    assert torch.isclose(heavy - base, 2 * mse, rtol=1e-4)


def test_paper_share_gives_that_share_the_papers_corner_square():
    """With `paper_share`, about that share of the triggered images carry exactly the paper's
    training trigger (a white 4x4 square in a corner, its pixels as the mask target); the rest
    get random triggers."""
    clean = torch.full((600, 1, 12, 12), 0.5)
    cfg = AEConfig(triggers="random", triggered_share=1.0, paper_share=0.3)
    x, _, changed = ae_batch(clean, cfg, np.random.default_rng(0))
    corners = [(slice(0, 4), slice(0, 4)), (slice(0, 4), slice(8, 12))]
    corners += [(slice(8, 12), slice(0, 4)), (slice(8, 12), slice(8, 12))]

    def papers(x: torch.Tensor, changed: torch.Tensor) -> float:
        """The share of images whose only change is a white 4x4 corner square, in the mask."""
        hits = [
            int((x[i, 0] != 0.5).sum()) == 16
            and any(
                bool((x[i, 0][r, c] == 1.0).all()) and bool(changed[i, 0][r, c].all())
                for r, c in corners
            )
            for i in range(len(x))
        ]
        return float(np.mean(hits))

    assert 0.22 < papers(x, changed) < 0.38
    x, _, changed = ae_batch(clean, replace(cfg, paper_share=0.0), np.random.default_rng(0))
    assert papers(x, changed) < 0.02


def test_under_a_time_budget_the_schedule_follows_whichever_is_further_on():
    # 10% of the steps but half the budget spent: the LR schedule is half-way.
    assert progress(10, 100, elapsed=50.0, budget=100.0) == 0.5
    assert progress(60, 100, elapsed=50.0, budget=100.0) == 0.6  # steps further on
    assert progress(10, 100, elapsed=500.0, budget=None) == 0.1  # no budget: steps alone
    assert progress(10, 100, elapsed=150.0, budget=100.0) == 1.0  # past it: the floor


def test_an_epoch_that_would_end_past_the_budget_is_not_started():
    assert no_time_for_another(elapsed=70.0, epoch_s=40.0, budget=100.0)
    assert not no_time_for_another(elapsed=50.0, epoch_s=40.0, budget=100.0)
    assert not no_time_for_another(elapsed=1e9, epoch_s=40.0, budget=None)


def test_a_budgeted_run_stops_between_epochs_with_its_lr_at_the_floor(tmp_path, monkeypatch):
    # A fake clock that advances 1 s per reading: the budget of 60 s runs out inside the
    # middle of the run, so training stops after fewer epochs than asked, and the last learning
    # rate set is near the schedule's floor (10% of lr), not where the epochs' count had it
    # (about 90% of lr, a few epochs into twenty).
    import training.fit.autoencoder as fit_ae

    ticks = iter(range(10**6))
    monkeypatch.setattr(fit_ae.time, "time", lambda: float(next(ticks)))
    lrs: list[float] = []
    real_step = torch.optim.Adam.step

    def step(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    cfg = AEConfig(arch="conv", width=2, epochs=20, batch_size=8, threads=1, lr=1e-3)
    images = np.zeros((32, 1, 8, 8), np.uint8)  # 4 steps per epoch
    stats: dict = {}
    train_autoencoder(cfg, images, tmp_path, log=lambda _: None, time_budget=60.0, stats=stats)
    assert stats["stopped_by_budget"] and 1 <= stats["epochs_done"] < 20
    assert lrs[-1] < cfg.lr * 0.2


def test_a_teacher_graph_gives_the_l2_targets_and_names_the_checkpoint(tmp_path):
    """Distillation (issue 20): with a teacher, the student's L2 target is the teacher's output
    on the training input. An identity teacher asks the student to keep every trigger: its
    output then moves toward the triggered input, not the clean image; the checkpoint is named
    `_distilled` and records the teacher's sha256."""
    import onnx
    from onnx import TensorProto, helper

    from training.config import run_name
    from training.fit.autoencoder import Teacher, train_autoencoder

    shape = ["N", 1, 12, 12]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["images_out"])],
        "identity",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("images_out", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    teacher_path = tmp_path / "identity.onnx"
    onnx.save(model, teacher_path)
    x = torch.rand(3, 1, 12, 12)
    assert torch.equal(Teacher(teacher_path)(x), x)
    cfg = AEConfig(
        arch="slim",
        epochs=1,
        batch_size=16,
        width=4,
        triggers="random",
        triggered_share=1.0,
        teacher=str(teacher_path),
        threads=1,
    )
    assert run_name(cfg) == "slim_random_w4_distilled"
    images = (np.random.default_rng(0).random((64, 1, 12, 12)) * 40).astype(np.uint8)
    train_autoencoder(cfg, images, tmp_path / "runs", log=lambda _: None)
    path = tmp_path / "runs" / "detrigger_slim_random_w4_distilled.ckpt"
    ckpt = torch.load(path, weights_only=False)
    assert ckpt["config"]["teacher"] == str(teacher_path)
    assert len(ckpt["config"]["teacher_sha256"]) == 64
