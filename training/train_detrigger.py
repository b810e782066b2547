"""Train a de-trigger autoencoder: map an image carrying a training trigger back to the clean
image, and map an untouched image to itself.

Each batch is a mix: a share `triggered_share` of the images get a training trigger, the rest
are left as they are; the target is always the clean image (L2 loss). Training on untouched
images as well teaches the AE to leave clean images alone, which keeps false positives down.
The AE never sees the target model nor the real trigger. The training triggers (--triggers):
- `random` (trigger-agnostic, the default: the shipped AE's): a trigger drawn per image from
  training/data/trigger_sampler.py (patches of side 2..8 anywhere, solid / noise / checkerboard
  / binary; full-image blends with alpha 0.05..0.3; full-image additive patterns of amplitude
  0.02..0.15), with families left out by --exclude for a generalisation test;
- `corner` (the paper's, which `make reproduce` also trains for its mlp and conv AEs): a 4x4
  white square in a random corner;
- `none`: no trigger of its own, only the synthesised ones below.

Epochs and recipe are the preset's (training/config.py): its AE of that --arch trained on those
triggers where it has one (the `random` AE), else its --arch AE.

--synthesised (an audit folder, reports/audit/<dataset>/<set>) adds the triggers that the model
audit synthesised for its flagged classes (training/inversion/synthesised.py): a share
`synthesised_share` of the triggered images get one of them instead (all of them with
`triggers="none"`).

    python -m training.train_detrigger --dataset mnist --triggers random
    python -m training.train_detrigger --dataset mnist --triggers corner \
        --synthesised reports/audit/mnist/mnist
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from training import cli
from training.config import (
    AE_TRIGGERS,
    FAMILY_SET_NAMES,
    PRESETS,
    AEConfig,
    Preset,
    preset_autoencoder,
    run_name,
    with_triggers,
)
from training.data.datasets import load_dataset, split_train_val
from training.data.trigger_sampler import FAMILY_SETS, SamplerSpec
from training.fit.autoencoder import train_autoencoder
from training.inversion.synthesised import load_synthesised
from training.nets.checkpoints import config_dict
from training.nets.export import export_and_check

# AEConfig fields this command sets with options of their own, not with --recipe.
OWN_FIELDS = (
    "arch",
    "triggers",
    "exclude",
    "families",
    "synthesised",
    "teacher",
    "epochs",
    "threads",
)


def parser() -> argparse.ArgumentParser:
    p = cli.parser(__doc__, "training.train_detrigger")
    cli.add_dataset(p, "which preset's AE and training split")
    p.add_argument(
        "--arch",
        default="conv",
        choices=["mlp", "conv", "slim", "slim-fr"],
        help="which AE: mlp, conv, slim or slim-fr (the cheaper students of issue 20, on the "
        "conv AE's recipe; training/nets/autoencoders.py) (default: conv)",
    )
    p.add_argument(
        "--triggers",
        default="random",
        choices=AE_TRIGGERS,
        help="training triggers: random (the sampler; the shipped AE's), corner (the paper's) or "
        "none (only --synthesised) (default: random)",
    )
    p.add_argument(
        "--exclude",
        default="",
        help="comma-separated families, kinds or patterns of the sampler left out of training, "
        "e.g. checkerboard or blend (default: none)",
    )
    p.add_argument(
        "--families",
        default="base",
        choices=FAMILY_SET_NAMES,
        help="with --triggers random: the sampler's families, base (patches, blends, additive "
        "patterns: the shipped AEs), stamped (also frequency waves and input-specific patterns) "
        "or extended (also warps and photo filters) (default: base)",
    )
    p.add_argument(
        "--synthesised",
        default="",
        help="audit folder (reports/audit/<dataset>/<set>) whose flagged classes' synthesised "
        "triggers are added to the training triggers (default: none)",
    )
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the preset's)")
    p.add_argument(
        "--teacher",
        default="",
        help="distil: an AE graph (ONNX file, e.g. models/mnist/detrigger.onnx) whose outputs "
        "are the L2 targets instead of the clean images (default: none)",
    )
    cli.add_recipe(p, "AE", "l2_weight=60, corner_share=0.5, edge_share=0.25 or width=8")
    p.add_argument(
        "--run-dir",
        default="runs",
        help="checkpoints go to <run-dir>/<dataset>/detrigger_<name>.ckpt (default: runs)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    p.add_argument(
        "--export",
        default="",
        help="also write the trained AE to this ONNX file (the model contract's detrigger graph, "
        "parity-checked on validation images), with a JSON of its config beside it",
    )
    return p


def ae_config(p: argparse.ArgumentParser, args: argparse.Namespace, preset: Preset) -> AEConfig:
    """The preset's AE with the command's triggers and recipe flags; a bad value, or a changed
    recipe in the preset's run dir, stops with a parser error before any data is read."""
    exclude = tuple(e for e in args.exclude.split(",") if e)
    base = preset_autoencoder(preset.autoencoders, args.arch, args.triggers)
    cfg = replace(
        with_triggers(base, args.triggers, exclude, args.epochs, args.threads),
        synthesised=args.synthesised,
        families=args.families,
        teacher=args.teacher,
    )
    if args.teacher and not Path(args.teacher).is_file():
        p.error(f"--teacher {args.teacher}: no such file")
    tuned = cli.recipe(p, args.recipe, cfg, OWN_FIELDS)
    # The recipe is not part of the checkpoint's name: in the preset's run dir, a changed recipe
    # would overwrite the checkpoint that `make reproduce` and training.swap_detrigger reload.
    cli.refuse_in_default_run_dir(
        p,
        args.run_dir,
        cli.changed_fields(tuned, cfg),
        f"{run_name(cfg)} AE",
        f"{args.run_dir}/{args.dataset}/detrigger_{run_name(cfg)}.ckpt",
    )
    cfg = tuned
    try:
        # a bad name fails here, before loading data
        SamplerSpec(families=FAMILY_SETS[cfg.families], exclude=cfg.exclude).active()
    except ValueError as e:
        p.error(f"--exclude: {e}")
    if args.triggers == "none" and not args.synthesised:
        p.error("--triggers none needs --synthesised")
    if args.synthesised:
        try:
            load_synthesised(args.synthesised, cfg.synthesised_dilate)
        except (OSError, ValueError) as e:
            p.error(f"--synthesised: {e}")
    return cfg


def main() -> None:
    p = parser()
    args = p.parse_args()
    preset = PRESETS[args.dataset]
    cfg = ae_config(p, args, preset)
    train = load_dataset(args.dataset, "train", args.data_dir)
    tr, va = split_train_val(len(train), preset.target.val_size, preset.target.seed)
    ae = train_autoencoder(cfg, train.images[tr], Path(args.run_dir) / args.dataset)
    if args.export:
        path = Path(args.export)
        batch = torch.from_numpy(train.images[va[:64]]).float().div_(255.0)
        entry = export_and_check(ae, batch, path, "images", "images_out")
        info = {"detrigger": entry, "autoencoder": config_dict(cfg), "dataset": args.dataset}
        path.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
        print(f"{run_name(cfg)} AE written to {path} (parity {entry['parity_max_abs_diff']:.2e})")


if __name__ == "__main__":
    main()
