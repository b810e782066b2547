from pathlib import Path

import torch
from torch import nn

from training.nets.checkpoints import config_dict, resume, same_config, save


def _model_and_opt(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def test_resume_restores_weights_when_only_threads_differ(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    model, opt = _model_and_opt(0)
    save(path, {"lr": 1e-3, "threads": 1}, model, opt, epoch=3)
    other, other_opt = _model_and_opt(1)
    logs: list[str] = []
    epoch = resume(path, {"lr": 1e-3, "threads": 2}, other, other_opt, "target", logs.append)
    assert epoch == 3
    assert torch.equal(other.weight, model.weight)
    assert "resuming target" in logs[0]


def test_resume_starts_over_on_another_config_or_no_file(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    model, opt = _model_and_opt(0)
    assert resume(path, {"lr": 1e-3}, model, opt, "target", print) == 0
    save(path, {"lr": 1e-3}, model, opt, epoch=2)
    other, other_opt = _model_and_opt(1)
    before = other.weight.detach().clone()
    logs: list[str] = []
    assert resume(path, {"lr": 5e-4}, other, other_opt, "target", logs.append) == 0
    assert torch.equal(other.weight, before)
    assert "another config" in logs[0]


# The configs stored by runs made before `triggers`/`exclude` (AEConfig) and `attack`/`init_from`
# (TargetConfig) existed, copied from runs/mnist/*.ckpt.
OLD_AE = {
    "arch": "conv",
    "epochs": 1,
    "batch_size": 128,
    "lr": 0.002,
    "width": 16,
    "triggered_share": 0.5,
    "mask_weight": 1.0,
    "mask_pos_weight": 5.0,
    "trigger_size": 4,
    "trigger_value": 1.0,
    "seed": 0,
    "threads": 1,
}
OLD_TARGET = {
    "dataset": "mnist",
    "arch": "kwon_cnn",
    "widths": None,
    "epochs": 4,
    "batch_size": 128,
    "optimizer": "adam",
    "lr": 0.001,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "schedule": "onecycle",
    "label_smoothing": 0.0,
    "augment": "none",
    "poison_rate": 0.1,
    "target_class": 0,
    "trigger": {"kind": "patch", "size": 4, "position": "top-left", "value": 1.0},
    "val_size": 5000,
    "seed": 0,
    "threads": 1,
}


def test_checkpoints_older_than_a_new_field_match_it_at_its_default(tmp_path: Path) -> None:
    from training.config import PRESETS, AEConfig, TargetConfig

    ae_now = config_dict(PRESETS["mnist"].autoencoders["conv"])  # threads 2, triggers "corner"
    ae_defaults = config_dict(AEConfig())
    assert set(ae_now) - set(OLD_AE) == {
        "triggers",
        "exclude",
        "synthesised",
        "synthesised_share",
        "synthesised_dilate",
        "fill",
        "residual",
        "corner_share",
        "edge_share",
        "l2_weight",
        "paper_share",
        "families",
        "teacher",
    }
    assert not same_config(OLD_AE, ae_now)  # without the defaults: a missing key differs
    assert same_config(OLD_AE, ae_now, ae_defaults)
    assert not same_config(OLD_AE, {**ae_now, "triggers": "random"}, ae_defaults)
    assert not same_config(OLD_AE, {**ae_now, "exclude": ["blend"]}, ae_defaults)
    assert not same_config(OLD_AE, {**ae_now, "edge_share": 0.25}, ae_defaults)
    assert not same_config(OLD_AE, {**ae_now, "synthesised": "reports/a/b"}, ae_defaults)
    assert not same_config(OLD_AE, {**ae_now, "fill": "extended"}, ae_defaults)
    assert not same_config(OLD_AE, {**ae_now, "teacher": "a.onnx"}, ae_defaults)
    assert not same_config(OLD_AE, {**ae_now, "residual": 0.35}, ae_defaults)
    assert not same_config(OLD_AE, {**ae_now, "corner_share": 0.25}, ae_defaults)
    assert not same_config(OLD_AE, {**ae_now, "l2_weight": 60.0}, ae_defaults)
    assert not same_config(OLD_AE, {**ae_now, "paper_share": 0.2}, ae_defaults)

    target_now = config_dict(PRESETS["mnist"].target)
    target_defaults = config_dict(TargetConfig())
    assert set(target_now) - set(OLD_TARGET) == {"attack", "init_from", "poison_focus"}
    assert same_config(OLD_TARGET, target_now, target_defaults)
    assert not same_config(
        OLD_TARGET, {**target_now, "init_from": "runs/x/target.ckpt"}, target_defaults
    )
    assert not same_config(OLD_TARGET, {**target_now, "poison_focus": 0.5}, target_defaults)
    two = [{"target_class": 1, "trigger": OLD_TARGET["trigger"]}] * 2
    assert not same_config(OLD_TARGET, {**target_now, "attack": two}, target_defaults)

    # and through resume(), as train_target and train_autoencoder call it
    path = tmp_path / "old.ckpt"
    model, opt = _model_and_opt(0)
    save(path, OLD_TARGET, model, opt, epoch=4)
    other, other_opt = _model_and_opt(1)
    logs: list[str] = []
    assert resume(path, target_now, other, other_opt, "target", logs.append, target_defaults) == 4
    assert torch.equal(other.weight, model.weight)
