"""The configs (training/config.py): AE names, the presets' AEs and the checks on AEConfig."""

from __future__ import annotations

from dataclasses import replace

import pytest

from training.config import AEConfig, preset_autoencoder, run_name, with_triggers
from training.nets.checkpoints import config_dict


def test_checkpoint_names_keep_the_corner_name():
    assert run_name(AEConfig(arch="conv")) == "conv"
    assert run_name(AEConfig(arch="conv", triggers="random")) == "conv_random"
    cfg = AEConfig(arch="mlp", triggers="random", exclude=("checkerboard", "blend"))
    assert run_name(cfg) == "mlp_random_minus-checkerboard-blend"


def test_a_narrower_ae_gets_a_checkpoint_name_of_its_own():
    """Two widths of one recipe in one run folder (MNIST's `stamped` and `narrow`) must not
    resume or reload each other's checkpoint."""
    wide = AEConfig(arch="conv", triggers="random", families="stamped")
    narrow = replace(wide, width=8)
    assert run_name(wide) == "conv_random_stamped"
    assert run_name(narrow) == "conv_random_stamped_w8"


def test_with_triggers_copies_the_preset_ae():
    from training.config import PRESETS

    base = PRESETS["mnist"].autoencoders["conv"]
    cfg = with_triggers(base, "random", ("blend",), epochs=3, threads=1)
    assert (base.triggers, base.exclude) == ("corner", ())  # the preset is not changed
    assert (cfg.triggers, cfg.exclude, cfg.epochs, cfg.threads) == ("random", ("blend",), 3, 1)
    assert (cfg.lr, cfg.width, cfg.batch_size) == (base.lr, base.width, base.batch_size)
    assert run_name(cfg) == "conv_random_minus-blend"


def test_the_preset_random_ae_is_the_base_for_random_triggers():
    """`train_detrigger --triggers random` trains the preset's `random` AE (its epochs), the one
    `make reproduce` ships, so both name and reuse one checkpoint; a preset without one falls
    back to its `conv` AE with the triggers replaced."""
    from training.config import PRESETS

    mnist = PRESETS["mnist"].autoencoders
    assert preset_autoencoder(mnist, "conv", "random") is mnist["random"]
    assert preset_autoencoder(mnist, "conv", "corner") is mnist["conv"]
    assert preset_autoencoder(mnist, "conv", "none") is mnist["conv"]
    assert mnist["random"].epochs > mnist["conv"].epochs
    assert run_name(with_triggers(mnist["random"], "random")) == "conv_random"
    cifar = {
        k: v for k, v in PRESETS["cifar10"].autoencoders.items() if k not in ("random", "stamped")
    }
    assert preset_autoencoder(cifar, "conv", "random") is cifar["conv"]


@pytest.mark.parametrize(
    ("dataset", "shipped", "width"),
    [("mnist", "narrow", 8), ("fashion-mnist", "stamped", 16), ("cifar10", "stamped", 16)],
)
def test_each_preset_ships_its_random_recipe_on_the_stamped_families(dataset, shipped, width):
    """The shipped AE is the preset's `random` recipe with only the family set changed (and, on
    MNIST, the width: issue 20's cheaper AE), so `train_detrigger --triggers random --families
    stamped [--recipe width=8]` trains it under the same name."""
    from training.config import PRESETS

    preset = PRESETS[dataset]
    ae = preset.autoencoders[preset.shipped_ae]
    assert preset.shipped_ae == shipped
    assert ae == replace(preset.autoencoders["random"], families="stamped", width=width)
    assert run_name(ae) == "conv_random_stamped" + ("" if width == 16 else f"_w{width}")


def test_a_slim_ae_without_a_preset_entry_takes_the_conv_recipe():
    """`train_detrigger --arch slim` (issue 20's student): the conv AE's recipe for the same
    triggers (its epochs, fill, residual), on the slim net, under a checkpoint name of its own."""
    from training.config import PRESETS

    mnist = PRESETS["mnist"].autoencoders
    slim = preset_autoencoder(mnist, "slim", "random")
    assert slim == replace(mnist["random"], arch="slim")
    assert mnist["random"].arch == "conv"  # the preset is not changed
    assert preset_autoencoder(mnist, "slim", "corner") == replace(mnist["conv"], arch="slim")
    assert run_name(with_triggers(slim, "random")) == "slim_random"


@pytest.mark.parametrize(
    ("field", "value"), [("triggered_share", 1.2), ("paper_share", -0.5), ("l2_weight", -1.0)]
)
def test_the_config_refuses_a_share_outside_0_1_or_a_non_positive_l2_weight(field, value):
    """Also for configs built in code (presets), not only through the CLI flags."""
    with pytest.raises(ValueError, match=f"{field} must"):
        AEConfig(**{field: value})
    with pytest.raises(ValueError, match=f"{field} must"):
        replace(AEConfig(), **{field: value})


def test_only_cifar10_changes_the_shared_random_ae_recipe():
    """MNIST and Fashion-MNIST ship AEs trained with the shared recipe (their checkpoints must
    keep matching it); CIFAR-10 changes exactly the fields it names, and the changes are real."""
    from training.config import CIFAR10_RANDOM_AE, PRESETS, random_ae

    shared = config_dict(random_ae())
    for name in ("mnist", "fashion-mnist"):
        assert config_dict(PRESETS[name].autoencoders["random"]) == shared
    cifar = config_dict(PRESETS["cifar10"].autoencoders["random"])
    changed = {k for k in shared if cifar[k] != shared[k]}
    assert changed == set(CIFAR10_RANDOM_AE)
