"""Train a de-trigger autoencoder: map an image carrying a training trigger back to the clean
image, and map an untouched image to itself.

Each batch is a mix: a share `triggered_share` of the images get a training trigger, the rest
are left as they are; the target is always the clean image (L2 loss). Training on untouched
images as well teaches the AE to leave clean images alone, which keeps false positives down.
The AE never sees the target model nor the real trigger. The training triggers (`triggers`):
- `corner` (the paper's, the default): a 4x4 white square in a random corner;
- `random` (trigger-agnostic): a trigger drawn per image from training/data/trigger_sampler.py
  (patches of side 2..8 anywhere, solid / noise / checkerboard / binary; full-image blends with
  alpha 0.05..0.3; full-image additive patterns of amplitude 0.02..0.15), with families left out
  by `exclude` for a generalisation test;
- `none`: no trigger of its own, only the synthesised ones below.

`synthesised` (an audit folder, reports/audit/<dataset>/<set>) adds the triggers that the model
audit synthesised for its flagged classes (training/audit/synthesised.py): a share
`synthesised_share` of the triggered images get one of them instead (all of them with
`triggers="none"`).

    python -m training.train_detrigger --dataset mnist --triggers random
    python -m training.train_detrigger --dataset mnist --triggers corner \
        --synthesised reports/audit/mnist/mnist
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from training import cli
from training.audit.synthesised import load_synthesised, stamp_synthesised
from training.config import (
    AE_TRIGGERS,
    PRESETS,
    AEConfig,
    preset_autoencoder,
    run_name,
    with_triggers,
)
from training.data.datasets import load_dataset, split_train_val
from training.data.trigger_sampler import SamplerSpec, sample_triggers
from training.data.triggers import random_corner_patch
from training.nets.autoencoders import Clamp01, MaskedConvAutoencoder, build_autoencoder
from training.nets.checkpoints import config_dict, resume, save
from training.nets.export import export_and_check


def ae_batch(
    clean: torch.Tensor, cfg: AEConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input, target, mask target) for one AE step from clean float images (B, C, H, W). The
    mask target (B, 1, H, W) marks the pixels the mask should open: for corner squares the pixels
    they changed, for random triggers what training/data/trigger_sampler.py says."""
    if cfg.triggers not in AE_TRIGGERS:
        raise ValueError(
            f"unknown training triggers {cfg.triggers!r}; allowed: {', '.join(AE_TRIGGERS)}"
        )
    if cfg.triggers == "none" and not cfg.synthesised:
        raise ValueError('training triggers "none" need synthesised triggers (an audit folder)')
    x = clean.clone()
    stamped = rng.random(len(clean)) < cfg.triggered_share
    synth = np.zeros(len(clean), bool)
    if cfg.synthesised:
        share = 1.0 if cfg.triggers == "none" else cfg.synthesised_share
        synth = stamped & (rng.random(len(clean)) < share)
    own = stamped & ~synth
    paper = own if cfg.triggers == "corner" else np.zeros(len(clean), bool)
    if cfg.triggers == "random" and cfg.paper_share:  # no draw without: old runs stay as they were
        paper = own & (rng.random(len(clean)) < cfg.paper_share)
    changed = torch.zeros(len(clean), 1, *clean.shape[-2:])
    pidx = torch.from_numpy(np.flatnonzero(paper))
    if len(pidx):
        x[pidx], _ = random_corner_patch(clean[pidx], rng, cfg.trigger_size, cfg.trigger_value)
        changed[pidx] = changed_pixels(x[pidx], clean[pidx])
    idx = torch.from_numpy(np.flatnonzero(own & ~paper))
    if len(idx):
        spec = SamplerSpec(exclude=tuple(cfg.exclude), corner_share=cfg.corner_share)
        x[idx], changed[idx], family = sample_triggers(clean[idx], rng, spec)
        if cfg.residual:  # full-image triggers are the correction's: the mask stays shut
            kinds = np.array([f.kind for f in spec.active()])[family]
            changed[idx[torch.from_numpy(kinds != "patch")]] = 0.0
    sidx = torch.from_numpy(np.flatnonzero(synth))
    if len(sidx):
        triggers = load_synthesised(cfg.synthesised, cfg.synthesised_dilate)
        x[sidx], changed[sidx] = stamp_synthesised(clean[sidx], triggers, rng)
    return x, clean, changed


def make_ae_batch(
    clean: torch.Tensor, cfg: AEConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target) for one AE step from clean float images (B, C, H, W)."""
    x, target, _ = ae_batch(clean, cfg, rng)
    return x, target


def changed_pixels(x: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) float: 1 where any channel of x differs from the clean image."""
    return ((x - clean).abs().amax(1, keepdim=True) > 0).float()


def detrigger_loss(
    ae: nn.Module,
    x: torch.Tensor,
    clean: torch.Tensor,
    cfg: AEConfig,
    changed: torch.Tensor | None = None,
) -> torch.Tensor:
    """L2 loss (the paper): mean squared error over pixels. For the masked conv AE, plus a BCE
    that teaches the mask `changed` (B, 1, H, W), by default the pixels the trigger changed."""
    inner = ae.ae if isinstance(ae, Clamp01) else ae
    if not isinstance(inner, MaskedConvAutoencoder):
        return F.mse_loss(ae(x), clean)
    mask_logit, fill, correction = inner.parts(x)  # (B, 1, H, W), (B, C, H, W) x 2
    # Not clipped: an extended fill or a correction is pulled to the clean value itself (a clip
    # would stop its gradient outside [0, 1]).
    out = inner.compose(x, mask_logit, fill, correction)
    if changed is None:
        changed = changed_pixels(x, clean)
    bce = F.binary_cross_entropy_with_logits(
        mask_logit, changed, pos_weight=torch.tensor(cfg.mask_pos_weight)
    )
    return cfg.l2_weight * F.mse_loss(out, clean) + cfg.mask_weight * bce


def train_autoencoder(
    cfg: AEConfig, train_images: np.ndarray, run_dir: Path, log=print
) -> nn.Module:
    """Train (or reload a finished run of) the AE of `cfg` on clean uint8 images (N, C, H, W)."""
    torch.set_num_threads(cfg.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = run_name(cfg)
    ckpt_path = run_dir / f"detrigger_{name}.ckpt"
    n, c, h, _ = train_images.shape
    torch.manual_seed(cfg.seed)
    ae = build_autoencoder(cfg.arch, c, h, cfg.width, cfg.fill, cfg.residual)
    opt = torch.optim.Adam(ae.parameters(), lr=cfg.lr)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    cfg_dict = config_dict(cfg)
    if cfg.synthesised:  # the audit folder's content, not only its name
        triggers = load_synthesised(cfg.synthesised, cfg.synthesised_dilate)
        cfg_dict["synthesised_sha256"] = triggers.sha256()

    start_epoch = resume(
        ckpt_path, cfg_dict, ae, opt, f"{name} AE", log, defaults=config_dict(AEConfig())
    )

    images_t = torch.from_numpy(train_images)
    for epoch in range(start_epoch, cfg.epochs):
        rng = np.random.default_rng(cfg.seed * 1000 + epoch)
        ae.train()
        perm = torch.from_numpy(rng.permutation(n))
        # Cosine decay to 10% of lr over the run, per step.
        t0, loss_sum, seen = time.time(), 0.0, 0
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"{name} AE epoch {epoch + 1}/{cfg.epochs}",
            mininterval=10,
            leave=False,
        )
        for i in bar:
            step = epoch * steps_per_epoch + i
            frac = step / (cfg.epochs * steps_per_epoch)
            for group in opt.param_groups:
                group["lr"] = cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            clean = images_t[idx].float().div_(255.0)  # (B, C, H, W)
            x, target, changed = ae_batch(clean, cfg, rng)
            loss = detrigger_loss(ae, x, target, cfg, changed)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{loss_sum / seen:.5f}", refresh=False)
        dt = time.time() - t0
        log(
            f"{name} AE epoch {epoch + 1}/{cfg.epochs}: loss {loss_sum / seen:.6f} "
            f"({dt:.0f} s, {seen / dt:.0f} img/s)"
        )
        save(ckpt_path, cfg_dict, ae, opt, epoch + 1)
    ae.eval()
    return ae


def main() -> None:
    p = cli.parser(__doc__)
    cli.add_dataset(p, "which preset's AE and training split")
    p.add_argument(
        "--arch", default="conv", choices=["mlp", "conv"], help="which AE (default: conv)"
    )
    p.add_argument(
        "--triggers",
        default="random",
        choices=AE_TRIGGERS,
        help="training triggers: random (the sampler) or corner (the paper's; what "
        "`make reproduce` trains) (default: random)",
    )
    p.add_argument(
        "--exclude",
        default="",
        help="comma-separated families, kinds or patterns of the sampler left out of training, "
        "e.g. checkerboard or blend (default: none)",
    )
    p.add_argument(
        "--synthesised",
        default="",
        help="audit folder (reports/audit/<dataset>/<set>) whose flagged classes' synthesised "
        "triggers are added to the training triggers (default: none)",
    )
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the preset's)")
    p.add_argument(
        "--corner-share",
        type=float,
        default=None,
        help="with --triggers random: share of patches put in a corner (default: the preset's); "
        "a changed value needs another --run-dir",
    )
    p.add_argument(
        "--paper-share",
        type=float,
        default=None,
        help="with --triggers random: share of the triggered images that get the paper's corner "
        "square instead (default: the preset's); a changed value needs another --run-dir",
    )
    p.add_argument(
        "--l2-weight",
        type=float,
        default=None,
        help="weight of the L2 loss against the mask BCE (default: the preset's); a changed value "
        "needs another --run-dir",
    )
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
    args = p.parse_args()
    preset = PRESETS[args.dataset]
    exclude = tuple(e for e in args.exclude.split(",") if e)
    base = preset_autoencoder(preset.autoencoders, args.arch, args.triggers)
    cfg = replace(
        with_triggers(base, args.triggers, exclude, args.epochs, args.threads),
        synthesised=args.synthesised,
    )
    recipe = {
        "corner_share": args.corner_share,
        "paper_share": args.paper_share,
        "l2_weight": args.l2_weight,
    }
    try:
        cfg = replace(cfg, **{k: v for k, v in recipe.items() if v is not None})
    except ValueError as e:  # AEConfig's own checks, named by flag
        p.error("--" + str(e).replace("_", "-"))
    # The recipe is not part of the checkpoint's name: in the preset's run dir, a changed recipe
    # would overwrite the checkpoint that `make reproduce` and training.swap_detrigger reload.
    cli.refuse_in_default_run_dir(
        p,
        args.run_dir,
        [k for k, v in recipe.items() if v is not None and v != getattr(base, k)],
        f"{run_name(cfg)} AE",
        f"{args.run_dir}/{args.dataset}/detrigger_{run_name(cfg)}.ckpt",
    )
    try:
        SamplerSpec(exclude=cfg.exclude).active()  # a bad name fails here, before loading data
    except ValueError as e:
        p.error(f"--exclude: {e}")
    if args.triggers == "none" and not args.synthesised:
        p.error("--triggers none needs --synthesised")
    if args.synthesised:
        try:
            load_synthesised(args.synthesised, cfg.synthesised_dilate)
        except (OSError, ValueError) as e:
            p.error(f"--synthesised: {e}")
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
