"""The de-trigger AE's training loop: each batch a mix of clean images and images carrying a
training trigger (corner squares, the random sampler, an audit's synthesised triggers), the clean
image the target; the train_detrigger job's docstring describes the recipe."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from training.config import AE_TRIGGERS, AEConfig, run_name
from training.data.trigger_sampler import FAMILY_SETS, SamplerSpec, sample_triggers
from training.data.triggers import random_corner_patch
from training.inversion.synthesised import load_synthesised, stamp_synthesised
from training.nets.autoencoders import Clamp01, MaskedAutoencoder, build_autoencoder
from training.nets.checkpoints import config_dict, resume, save


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
        spec = SamplerSpec(
            families=FAMILY_SETS[cfg.families],
            exclude=tuple(cfg.exclude),
            corner_share=cfg.corner_share,
            edge_share=cfg.edge_share,
        )
        x[idx], changed[idx], family = sample_triggers(clean[idx], rng, spec)
        if cfg.residual:  # full-image triggers are the correction's: the mask stays shut
            kinds = np.array([f.kind for f in spec.active()])[family]
            full_image = ~np.isin(kinds, ("patch", "dynamic"))  # dynamic: sparse, overwritten
            changed[idx[torch.from_numpy(full_image)]] = 0.0
    sidx = torch.from_numpy(np.flatnonzero(synth))
    if len(sidx):
        triggers = load_synthesised(cfg.synthesised, cfg.synthesised_dilate)
        x[sidx], changed[sidx] = stamp_synthesised(clean[sidx], triggers, rng)
    return x, clean, changed


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
    if not isinstance(inner, MaskedAutoencoder):
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


class _LossModule(nn.Module):
    """The AE with its loss as forward, so that DistributedDataParallel wraps one forward call
    (detrigger_loss reaches into the AE's parts, past a DDP wrapper's hooks)."""

    def __init__(self, ae: nn.Module, cfg: AEConfig):
        super().__init__()
        self.ae, self.cfg = ae, cfg

    def forward(self, x: torch.Tensor, clean: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
        return detrigger_loss(self.ae, x, clean, self.cfg, changed)


class Teacher:
    """A trained AE graph (ONNX Runtime, one thread) whose outputs are a student's L2 targets."""

    def __init__(self, path: Path) -> None:
        import hashlib

        import onnxruntime as ort

        data = path.read_bytes()
        self.sha256 = hashlib.sha256(data).hexdigest()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x_np = x.detach().cpu().numpy().astype(np.float32, copy=False)
        (out,) = self.session.run(None, {self.input_name: x_np})
        return torch.from_numpy(np.asarray(out, np.float32))


def _distributed() -> tuple[int, int]:
    """(rank, world size): of the process group torchrun's job set up, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train_autoencoder(
    cfg: AEConfig,
    train_images: np.ndarray,
    run_dir: Path,
    log=print,
    device: str = "cpu",
    time_budget: float | None = None,
    stats: dict | None = None,
) -> nn.Module:
    """Train (or reload a finished run of) the AE of `cfg` on clean uint8 images (N, C, H, W).

    On `device` (cpu, cuda, cuda:1); data-parallel over the process group when one is set up
    (torchrun: each rank trains on its DistributedSampler share, DDP averages the gradients,
    rank 0 alone writes the checkpoint). With `time_budget` (seconds) the learning rate decays on
    the budget's clock when that is ahead of the steps, and no epoch starts that would end past
    the budget (judged by the last epoch's time); the checkpoint resumes a stopped run later.
    `stats` receives the epochs done and whether the budget stopped the run. Returns the AE on
    the CPU, in eval mode."""
    torch.set_num_threads(cfg.threads)
    rank, world = _distributed()
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    name = run_name(cfg)
    ckpt_path = run_dir / f"detrigger_{name}.ckpt"
    n, c, h, _ = train_images.shape
    torch.manual_seed(cfg.seed)
    dev = torch.device(device)
    ae = build_autoencoder(cfg.arch, c, h, cfg.width, cfg.fill, cfg.residual).to(dev)
    opt = torch.optim.Adam(ae.parameters(), lr=cfg.lr)
    cfg_dict = config_dict(cfg)
    if cfg.synthesised:  # the audit folder's content, not only its name
        triggers = load_synthesised(cfg.synthesised, cfg.synthesised_dilate)
        cfg_dict["synthesised_sha256"] = triggers.sha256()
    teacher = Teacher(Path(cfg.teacher)) if cfg.teacher else None
    if teacher is not None:  # the teacher's graph, not only its path
        cfg_dict["teacher_sha256"] = teacher.sha256

    start_epoch = resume(
        ckpt_path,
        cfg_dict,
        ae,
        opt,
        f"{name} AE",
        log if rank == 0 else _quiet,
        defaults=config_dict(AEConfig()),
    )

    step_module: nn.Module = _LossModule(ae, cfg)
    sampler: Any = None
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data import DistributedSampler

        step_module = DistributedDataParallel(
            step_module, device_ids=[dev.index or 0] if dev.type == "cuda" else None
        )
        # any sized sequence serves: the sampler only draws indices 0..n-1
        sampler = DistributedSampler(range(n), world, rank, shuffle=True, seed=cfg.seed)  # type: ignore[arg-type]
    steps_per_epoch = math.ceil((n if sampler is None else len(sampler)) / cfg.batch_size)

    images_t = torch.from_numpy(train_images)
    clock = _BudgetClock(time_budget, world, dev)
    epochs_done = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        rng = np.random.default_rng(cfg.seed * 1000 + epoch + 7919 * rank)
        ae.train()
        if sampler is None:
            perm = torch.from_numpy(rng.permutation(n))
        else:
            sampler.set_epoch(epoch)
            perm = torch.tensor(list(sampler))
        # Cosine decay to 10% of lr over the run, per step; under a time budget the run's
        # progress is whichever is further on, the steps or the budget's time.
        t0, loss_sum, seen = time.time(), 0.0, 0
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"{name} AE epoch {epoch + 1}/{cfg.epochs}",
            mininterval=10,
            leave=False,
            disable=rank != 0,
        )
        for i in bar:
            step = epoch * steps_per_epoch + i
            frac = progress(step, cfg.epochs * steps_per_epoch, clock.elapsed(), time_budget)
            for group in opt.param_groups:
                group["lr"] = cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            clean = images_t[idx].float().div_(255.0)  # (B, C, H, W)
            x, target, changed = ae_batch(clean, cfg, rng)
            if teacher is not None:
                target = teacher(x)
            loss = step_module(x.to(dev), target.to(dev), changed.to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{loss_sum / seen:.5f}", refresh=False)
        dt = time.time() - t0
        epochs_done = epoch + 1
        if rank == 0:
            log(
                f"{name} AE epoch {epoch + 1}/{cfg.epochs}: loss {loss_sum / seen:.6f} "
                f"({dt:.0f} s, {seen * world / dt:.0f} img/s)"
            )
            save(ckpt_path, cfg_dict, ae, opt, epoch + 1)
        if epoch + 1 < cfg.epochs and clock.no_time_for_another(dt):
            if rank == 0:
                log(
                    f"time budget of {time_budget:.0f} s: another epoch would end past it, so "
                    f"training stops after epoch {epoch + 1} of {cfg.epochs}, its learning rate "
                    "decayed on the budget's clock (run again with the same --run-dir to resume)"
                )
            break
    if stats is not None:
        stats.update(
            epochs_done=epochs_done,
            epochs=cfg.epochs,
            families=cfg.families,
            stopped_by_budget=epochs_done < cfg.epochs,
            world_size=world,
            device=str(dev),
        )
    ae.eval()
    return ae.cpu()


def _quiet(_: str) -> None:
    pass


def progress(step: int, total_steps: int, elapsed: float, budget: float | None) -> float:
    """How far the run is, in [0, 1], for the learning-rate schedule: the share of steps done,
    or, with a time budget, the share of the budget spent when that is further on. The LR so
    reaches its floor when the budget ends, not at an epoch the budget cuts off; both shares
    only grow, so the schedule stays monotone."""
    frac = step / total_steps
    if budget is not None:
        frac = max(frac, elapsed / budget)
    return min(frac, 1.0)


def no_time_for_another(elapsed: float, epoch_s: float, budget: float | None) -> bool:
    """Whether an epoch as long as the last one would end past the budget."""
    return budget is not None and elapsed + epoch_s > budget


class _BudgetClock:
    """Seconds since training began as rank 0 reads them, and rank 0's epoch times: broadcast to
    every rank, so that all ranks set the same learning rate and stop after the same epoch."""

    def __init__(self, budget: float | None, world: int, dev: torch.device) -> None:
        self.t_start, self.budget, self.world, self.dev = time.time(), budget, world, dev

    def _rank0(self, value: float) -> float:
        if self.budget is None or self.world == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.dev)
        dist.broadcast(t, 0)
        return float(t.item())

    def elapsed(self) -> float:
        return self._rank0(time.time() - self.t_start)

    def no_time_for_another(self, epoch_s: float) -> bool:
        return no_time_for_another(self.elapsed(), self._rank0(epoch_s), self.budget)
