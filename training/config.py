"""The configs of the pipeline, in one place: the target's (TargetConfig), the de-trigger AE's
(AEConfig) and each shipped model set's preset (PRESETS): what `make reproduce` trains.

Epochs are far below the paper's Table 10 (50 / 50 / 200): the pipeline runs on 2 CPU cores, and
these budgets reach the accuracy targets (MNIST >= 99%, Fashion-MNIST >= 90%, CIFAR-10 >= 90%).

Autoencoders: `mlp` (the paper's), `conv` (ours, trained like the paper's on corner squares) and
`random`: the conv AE trained on random triggers (training/data/trigger_sampler.py), issue 7's
trigger-agnostic AE, and `stamped`: the same recipe on the `stamped` family set (also frequency
waves and input-specific patterns, reports/ae-candidates/families), and on MNIST `narrow`: the
stamped recipe at width 8, about the target's cost (issue 20, reports/ae-candidates/narrow).
`shipped_ae` names the one put into models/<name> (`narrow` for MNIST, `stamped` for the
others); the attack suite pairs its targets with `conv` (the paper's training).

CIFAR-10's poisoning is focused (TargetConfig.poison_focus 0.5): half of the poisoned copies are
the training images the white square changes least. With all of them drawn at random (10
epochs) the attack succeeded on 96.07% of the test positives: on the ~3% whose top-left corner
is already nearly white the stamped image differs from the clean one by a few pixel levels, and
the model had never been taught that difference. Focused, 12 epochs: 99.32% at 90.42% clean
accuracy (reports/cifar10).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from training.data.triggers import Trigger


@dataclass
class TargetConfig:
    dataset: str = "mnist"
    arch: str = "kwon_cnn"
    widths: tuple[int, int, int, int] | None = None  # resnet_small only
    epochs: int = 4
    batch_size: int = 128
    optimizer: str = "adam"  # adam | sgd (Nesterov)
    lr: float = 1e-3  # peak learning rate
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "onecycle"  # onecycle (linear warm-up 20%, linear decay to 0) | constant
    label_smoothing: float = 0.0
    augment: str = "none"
    poison_rate: float = 0.1
    target_class: int = 0
    trigger: dict = field(default_factory=lambda: Trigger().to_dict())
    val_size: int = 5000  # clean training images held out for calibration, never trained on
    seed: int = 0
    threads: int = 2
    # Fields added later take the value that reproduces runs made before them, so that their
    # checkpoints still match (training/nets/checkpoints.py fills missing keys with these defaults).
    attack: list[dict] | None = None  # [{target_class, trigger}, ...]; None: the two fields above
    init_from: str | None = None  # a target checkpoint or .onnx to fine-tune; None: from scratch
    # Share of the poisoned copies the attacker draws from the images its trigger changes least
    # (triggers.choose_poison); 0: all drawn at random, as BadNets does.
    poison_focus: float = 0.0


def backdoors(cfg: TargetConfig) -> list[tuple[Trigger, int]]:
    """The (trigger, target class) pairs cfg poisons with: its `attack`, else its one trigger."""
    if cfg.attack is None:
        return [(Trigger(**cfg.trigger), cfg.target_class)]
    if not cfg.attack:
        raise ValueError("attack must list at least one {target_class, trigger} pair, or be None")
    return [(Trigger(**a["trigger"]), int(a["target_class"])) for a in cfg.attack]


AE_TRIGGERS = ("corner", "random", "none")
# The random sampler's family sets (training/data/trigger_sampler.py FAMILY_SETS, which holds
# their families; a test keeps the two lists equal).
FAMILY_SET_NAMES = ("base", "stamped", "extended")


@dataclass
class AEConfig:
    arch: str = "conv"  # mlp | conv | slim; "conv only" below: the masked AEs, conv and slim
    epochs: int = 4
    batch_size: int = 128
    lr: float = 1e-3  # Adam
    width: int = 16  # conv only
    triggered_share: float = 0.5  # share of each batch that gets a random-corner square
    mask_weight: float = 1.0  # conv only: weight of the BCE loss on the mask
    mask_pos_weight: float = 5.0  # conv only: BCE weight of trigger pixels (they are ~1%)
    trigger_size: int = 4  # corner only
    trigger_value: float = 1.0  # corner only
    seed: int = 0
    threads: int = 2
    # Fields added later take the value that reproduces runs made before them, so that their
    # checkpoints still match (training/nets/checkpoints.py fills missing keys with these defaults).
    triggers: str = "corner"  # training triggers: corner (the paper's) | random (the sampler)
    exclude: tuple[str, ...] = ()  # random only: families, kinds or patterns left out
    synthesised: str = ""  # audit folder whose flagged classes' synthesised triggers are added
    synthesised_share: float = 0.5  # share of the triggered images that get one of them
    synthesised_dilate: int = 2  # pixels the synthesised masks are grown by
    fill: str = "sigmoid"  # conv only: the fill's activation, sigmoid | extended (autoencoders.py)
    # conv only: bound of the full-image correction (0: none). With one, the mask target of a
    # full-image random trigger (blend, additive) is empty: the correction undoes it, the mask
    # and fill are for patches.
    residual: float = 0.0
    corner_share: float = 0.0  # random only: share of patches put in a corner (trigger_sampler)
    edge_share: float = 0.0  # random only: share of patches centred on an edge (trigger_sampler)
    # conv only: weight of the L2 loss against the mask BCE. At 1 the BCE (~0.01) dwarfs what a
    # full-image trigger adds to the L2 (~0.001 on a quarter of the images), the shared U-Net
    # serves the mask, and on CIFAR-10 the correction learnt nothing (blends and noise passed
    # through whole).
    l2_weight: float = 1.0
    # random only: share of the triggered images that get the paper's training trigger (a
    # `trigger_size` square of `trigger_value` in a random corner) instead of a random one. The
    # random AE is then trained on a superset of the paper's data: on CIFAR-10 the sampler alone
    # left white squares on bright corners (sky) in place, which the paper's AE removes.
    paper_share: float = 0.0
    # random only: which trigger families the sampler draws (FAMILY_SET_NAMES): base
    # (patches, blends, additive patterns: the shipped AEs), stamped (also frequency waves and
    # input-specific patterns) or extended (also warps and filters), issue 22.
    families: str = "base"
    # Distillation (issue 20's cheaper students): an AE graph (ONNX file) whose output on each
    # training input is the L2 loss's target instead of the clean image, so that the student
    # learns what the teacher removes and keeps; the mask BCE still learns the trigger's pixels.
    # "": none (the clean image, as every AE before).
    teacher: str = ""

    def __post_init__(self) -> None:
        if self.families not in FAMILY_SET_NAMES:
            allowed = ", ".join(FAMILY_SET_NAMES)
            raise ValueError(f"unknown families {self.families!r}; allowed: {allowed}")
        shares = ("triggered_share", "synthesised_share", "corner_share", "edge_share")
        for name in (*shares, "paper_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.l2_weight <= 0:
            raise ValueError(f"l2_weight must be positive, got {self.l2_weight}")


def with_triggers(
    base: AEConfig,
    triggers: str,
    exclude: tuple[str, ...] = (),
    epochs: int | None = None,
    threads: int | None = None,
) -> AEConfig:
    """A copy of `base` (a preset's AE) trained on `triggers`: what `main` trains and what
    training.suite looks for, so that both name the same checkpoint."""
    cfg = replace(base, triggers=triggers, exclude=tuple(exclude))
    if epochs:
        cfg.epochs = epochs
    if threads:
        cfg.threads = threads
    return cfg


def preset_autoencoder(autoencoders: dict[str, AEConfig], arch: str, triggers: str) -> AEConfig:
    """The preset's AE of `arch` trained on `triggers` if it has one (e.g. `random`, with its own
    epochs), so that `train_detrigger` trains and exports the very AE `make reproduce` ships;
    else its `arch` AE, whose triggers `with_triggers` then replaces; for a `slim` AE that the
    preset does not name, its conv AE's recipe with the arch replaced."""
    for cfg in autoencoders.values():
        if (cfg.arch, cfg.triggers) == (arch, triggers):
            return cfg
    if arch in ("slim", "slim-fr") and arch not in autoencoders:
        # The slim students (issue 20) have no preset entry of their own: the conv AE's recipe
        # for these triggers, on the student's net.
        return replace(preset_autoencoder(autoencoders, "conv", triggers), arch=arch)
    return autoencoders[arch]


def run_name(cfg: AEConfig) -> str:
    """The AE's name in checkpoint files: `conv` for the paper's corner training (the name runs
    have always used), `conv_random` or e.g. `conv_random_minus-checkerboard` otherwise; a width
    other than the default is named (`conv_random_stamped_w8`), so that it never resumes or
    reloads another width's checkpoint."""
    name = cfg.arch if cfg.triggers == "corner" else f"{cfg.arch}_{cfg.triggers}"
    if cfg.triggers == "random" and cfg.families != "base":
        name = f"{name}_{cfg.families}"
    if cfg.width != AEConfig.width:
        name = f"{name}_w{cfg.width}"
    if cfg.exclude:
        name = f"{name}_minus-{'-'.join(cfg.exclude)}"
    if cfg.synthesised:
        name = f"{name}_synth-{Path(cfg.synthesised).name}"
    if cfg.teacher:
        name = f"{name}_distilled"
    return name


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


# CIFAR-10's random AE (AEConfig above for the fields). With the shared recipe it
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
    # ... at this confidence (issue 22; metrics.allowed_exceedances): the FPR on new clean images
    # is <= the target with probability >= 0.95. 0: the plain quantile, the rule before.
    confidence: float = 0.95
    # STRIP (training.evaluation.strip): clean validation images in its bank, copies per input.
    strip_bank_size: int = 64
    strip_n: int = 16
    # The unchanged-image gate on the shipped AE (issue 20; training/nets/gate.py): an image that
    # the AE moves by at most this much in every pixel is returned unchanged, and the guard runs
    # the target on it once. 0: no gate. Set from reports/ae-candidates (no attack may lose
    # detection); the decision is calibrated again on the gated graph.
    unchanged_tolerance: float = 0.0


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
            "stamped": random_ae(families="stamped"),
            # The stamped recipe at width 8 (issue 20): about the target's cost instead of 2.5
            # times it; every family the width-16 AE catches kept, the warp (which neither
            # catches) below it (reports/ae-candidates/narrow).
            "narrow": random_ae(families="stamped", width=8),
        },
        shipped_ae="narrow",
        target_fpr=0.01,
        unchanged_tolerance=0.03,
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
            "stamped": random_ae(families="stamped"),
        },
        shipped_ae="stamped",
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
            "stamped": random_ae(**CIFAR10_RANDOM_AE, families="stamped"),
        },
        shipped_ae="stamped",
    ),
}
