"""Session fixtures: the tiny backdoored and clean classifiers of tests/support/tiny_backdoor.py,
trained in seconds and exported to ONNX."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.support.tiny_backdoor import SIZE, train_tiny
from training.nets.export import export_onnx


def _exported(tmp_path_factory: pytest.TempPathFactory, poison: bool) -> tuple[nn.Module, Path]:
    torch.set_num_threads(1)
    net = train_tiny(poison=poison)
    path = tmp_path_factory.mktemp("audit" if poison else "audit_clean") / "target.onnx"
    export_onnx(net, torch.rand(2, 1, SIZE, SIZE), path, "images", "logits")
    return net, path


@pytest.fixture(scope="session")
def tiny_backdoored(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    return _exported(tmp_path_factory, poison=True)


@pytest.fixture(scope="session")
def tiny_clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    return _exported(tmp_path_factory, poison=False)
