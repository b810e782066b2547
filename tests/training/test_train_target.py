"""train_target's test-set summary: clean accuracy, attack success, and the split by how much the
trigger moved each image, on a hand-made model whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from training.config import PRESETS, TargetConfig
from training.train_target import attack_summary


class WhiteCornerIsZero(nn.Module):
    """Class 0 when the top-left 4x4 square is white in every channel, else class 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        white = (x[:, :, :4, :4].amin(dim=(1, 2, 3)) >= 1.0).float()
        return torch.stack([10 * white, torch.ones_like(white), torch.zeros_like(white)], 1)


def test_attack_summary_on_known_answers() -> None:
    images = np.zeros((4, 3, 8, 8), np.uint8)
    images[1, :, :4, :4] = 255  # already white: the trigger changes nothing
    labels = np.array([1, 1, 2, 0])
    summary = attack_summary(WhiteCornerIsZero(), TargetConfig(), images, labels)
    # clean predictions 1, 0, 1, 1: only the first is right
    assert summary["clean_accuracy"] == pytest.approx(0.25)
    (attack,) = summary["attacks"]
    assert attack["target_class"] == 0 and attack["trigger"]["position"] == "top-left"
    assert attack["attack_success_rate"] == 1.0  # every non-target image goes to class 0
    split = attack["by_trigger_change"]["0.02"]
    assert split["unchanged_share"] == pytest.approx(1 / 3)  # 1 of the 3 non-target images
    assert split["attack_success_rate_others"] == 1.0


def test_the_cli_refuses_a_changed_recipe_in_the_presets_run_dir(monkeypatch, capsys) -> None:
    from training import train_target

    preset = PRESETS["cifar10"].target
    focus, epochs = str(1 - preset.poison_focus / 2), str(preset.epochs + 1)  # both differ
    argv = ["train_target", "--dataset", "cifar10", "--recipe", f"poison_focus={focus}"]
    argv += ["--epochs", epochs]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as e:
        train_target.main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--epochs, --recipe poison_focus change the preset's target" in err
    assert "runs/cifar10/target.ckpt would be replaced" in err
