"""The configuration of each shipped model set: what `make reproduce` trains.

Epochs are far below the paper's Table 10 (50 / 50 / 200): the pipeline runs on 2 CPU cores, and
these budgets reach the accuracy targets (MNIST >= 99%, Fashion-MNIST >= 90%, CIFAR-10 >= 90%).

Autoencoders: `mlp` (the paper's), `conv` (ours, trained like the paper's on corner squares) and
`random`: the conv AE trained on random triggers (training/data/trigger_sampler.py), issue 7's
trigger-agnostic AE. `shipped_ae` names the one put into models/<name> (`random` for every
dataset); the attack suite pairs its targets with `conv` (the paper's training).

CIFAR-10's poisoning is focused (TargetConfig.poison_focus 0.5): half of the poisoned copies are
the training images the white square changes least. With all of them drawn at random (10
epochs) the attack succeeded on 96.07% of the test positives: on the ~3% whose top-left corner
is already nearly white the stamped image differs from the clean one by a few pixel levels, and
the model had never been taught that difference. Focused, 12 epochs: 99.32% at 90.42% clean
accuracy (reports/cifar10).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from training.train_detrigger import AEConfig
from training.train_target import TargetConfig


def random_ae(**changes: Any) -> AEConfig:
    """Issue 7's trigger-agnostic AE, one recipe for every dataset: the conv AE on random
    triggers (training/data/trigger_sampler.py) with the bounded full-image correction and the
    extended fill (training/nets/autoencoders.py), a quarter of the patches in a corner; `changes`
    override fields for one dataset. A new config per preset: configs are mutable
    (training.reproduce sets their thread count)."""
    cfg = AEConfig(
        arch="conv",
        epochs=6,
        batch_size=128,
        lr=2e-3,
        triggers="random",
        fill="extended",
        residual=0.35,
        corner_share=0.25,
    )
    return replace(cfg, **changes)


# CIFAR-10's random AE (training/train_detrigger.py for the fields). With the shared recipe it
# left blends and noise in place (its correction learnt nothing: the mask BCE outweighed the L2
# loss) and white squares on bright corners too. The L2 loss weighted 60 against the BCE, half
# the patches in a corner and a fifth of the triggered images carrying the paper's own corner
# square lift both (noise least: reports/detection/cifar10.md). MNIST and Fashion-MNIST keep
# the shared recipe that their shipped AEs were trained with.
CIFAR10_RANDOM_AE = {"l2_weight": 60.0, "corner_share": 0.5, "paper_share": 0.2}


@dataclass
class Preset:
    name: str
    mean: list[float]  # per-channel normalisation inside the target graph
    std: list[float]
    target: TargetConfig
    autoencoders: dict[str, AEConfig] = field(default_factory=dict)
    shipped_ae: str = "conv"  # the AE put into models/<name>: a key of `autoencoders`
    calibration_fprs: tuple[float, ...] = (0.01, 0.05)
    # The FPR the shipped threshold is calibrated for: 1% everywhere (issue 7's default). Issue 2's
    # looser per-dataset goals (3% Fashion-MNIST, 5% CIFAR-10) are in calibration_fprs.
    target_fpr: float = 0.01
    # STRIP (training.strip_calibrate): clean validation images in its bank, copies per input.
    strip_bank_size: int = 64
    strip_n: int = 16


PRESETS: dict[str, Preset] = {
    "mnist": Preset(
        name="mnist",
        mean=[0.1307],
        std=[0.3081],
        target=TargetConfig(
            dataset="mnist", arch="kwon_cnn", epochs=4, batch_size=128, optimizer="adam", lr=1e-3
        ),
        autoencoders={
            "mlp": AEConfig(arch="mlp", epochs=20, batch_size=128, lr=1e-3),
            "conv": AEConfig(arch="conv", epochs=1, batch_size=128, lr=2e-3),
            "random": random_ae(),
        },
        shipped_ae="random",
        target_fpr=0.01,
    ),
    "fashion-mnist": Preset(
        name="fashion-mnist",
        mean=[0.2860],
        std=[0.3530],
        target=TargetConfig(
            dataset="fashion-mnist",
            arch="kwon_cnn",
            epochs=12,
            batch_size=128,
            optimizer="adam",
            lr=1e-3,
        ),
        autoencoders={
            "mlp": AEConfig(arch="mlp", epochs=20, batch_size=128, lr=1e-3),
            "conv": AEConfig(arch="conv", epochs=1, batch_size=128, lr=2e-3),
            "random": random_ae(),
        },
        shipped_ae="random",
        calibration_fprs=(0.01, 0.03, 0.05),
    ),
    "cifar10": Preset(
        name="cifar10",
        mean=[0.4914, 0.4822, 0.4465],
        std=[0.2470, 0.2435, 0.2616],
        target=TargetConfig(
            dataset="cifar10",
            arch="resnet_small",
            widths=(32, 64, 128, 256),
            epochs=12,
            batch_size=256,
            optimizer="sgd",
            lr=0.2,
            weight_decay=5e-4,
            momentum=0.9,
            label_smoothing=0.2,
            augment="flip-translate",
            poison_focus=0.5,
        ),
        autoencoders={
            "mlp": AEConfig(arch="mlp", epochs=20, batch_size=128, lr=1e-3),
            "conv": AEConfig(arch="conv", epochs=1, batch_size=128, lr=2e-3),
            "random": random_ae(**CIFAR10_RANDOM_AE),
        },
        shipped_ae="random",
    ),
}
