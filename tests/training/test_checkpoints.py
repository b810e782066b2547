from pathlib import Path

import torch
from torch import nn

from training.checkpoints import resume, save


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
