"""A fine-tuned twin of the target: detector repaired for a backdoor nobody has found.

Fine-tuning a backdoored classifier on clean images, labelled with its own answers, tends to
erase a backdoor keyed to a faint image-wide signal (a smooth warp, a photo filter, a sine
grating) while the model keeps its clean answers: nothing in clean data exercises the trigger's
features, and the drift of a short fine-tune is enough to lose their precise tuning. A patch
backdoor usually survives (its features are strong and local), and that is the de-trigger AE's
share. So the twin serves as detector ``repaired`` (contract.manifest.RepairedSpec): where the
target answers the attacker's class and the twin the image's own, the two disagree; and
``detrigger_or_repaired`` joins it to the AE. No trigger is synthesised or assumed, unlike the
audit's unlearned copy (training.audit), which removes only the backdoor that it found.

The recipe (TwinConfig): Adam decayed linearly to 0 over a few epochs on at most ``images`` of
the user's training images, each shifted by up to ``shift`` pixels (reflect) so that the twin
does not simply memorise the target's answers on them; labels are the target's class of the
image as it is. The final linear layer starts afresh and is kept turned away from the target's
(feature shift tuning, Min et al., NeurIPS 2023): the fine-tune cannot settle back into the
weights the backdoor was trained into, so the features beneath them move too. Half of each
batch is also trained with a universal perturbation kept against the twin (a signed-gradient
step up its loss each step, within an L-infinity ball), labelled with the clean image's class:
a backdoor is the smallest change that takes every image to one class, so the perturbation
finds its direction, trigger unknown, and the twin unlearns it (I-BAU, Zeng et al., ICLR 2022,
in a one-step form; reports/byom/twin-adversarial measures it against the recipe without).
Part of the rest carries a random trigger of the de-trigger AE's sampler (patches, blends,
noise, waves, input-specific patterns, warps, filters), also labelled with the clean image's
class: the twin learns that such changes do not change the class, and a patch backdoor that the
fine-tune alone keeps loses its path too (reports/byom/twin-triggers).
Soft labels (the target's probabilities) would carry the backdoor over: in uncommitted probes on two
Fashion-MNIST backdoors a twin distilled from them kept most of it. Whether a given backdoor
is erased is measured, not assumed: fit's report gives the twin's agreement with the target on
the validation images, and reports/byom/twin measures it on backdoors of the families the AE
misses.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from training.data.augment import random_translate
from training.data.trigger_sampler import FAMILY_SETS, SamplerSpec, sample_triggers
from training.fit import autoencoder
from training.nets.onnx_torch import OnnxModule, load_onnx_module, write_onnx

AUTO_RADIUS = {1: 0.1, 3: 0.03}  # TwinConfig.adversarial None, by the images' channels


@dataclass(frozen=True)
class TwinConfig:
    epochs: int = 3
    lr: float = 1e-3
    images: int = 20_000  # at most this many training images (a seeded draw); an epoch's worth
    batch_size: int = 64
    shift: int = 2  # pixels, each direction
    seed: int = 0
    # Start the final linear layer afresh (small random weights, zero bias): the copy relearns
    # from clean images alone which features mean which class, so features that only a trigger
    # excites keep no path to the attacker's class.
    reinit_head: bool = True
    # Weight of a penalty on the final layer's alignment with the target's own (their inner
    # product over the squared norm of the target's), the layer's norm held at the target's:
    # feature shift tuning (Min et al., NeurIPS 2023). Pushed away from the weights the backdoor
    # was trained into, the features beneath them must move too, and a trigger's path goes.
    head_penalty: float = 0.2
    # Radius (L-infinity) of a universal perturbation kept against the twin: each step moves it
    # one signed-gradient step up the twin's loss on the batch, and half of the batch is trained
    # with it added, labelled with the clean image's class (adversarial unlearning in the manner
    # of I-BAU, Zeng et al., ICLR 2022): a backdoor is a small universal change that flips
    # every image to one class, the easiest such change there is. 0: none; None: by the images'
    # channels (AUTO_RADIUS), the adversarial-robustness literature's usual scales (0.1 for
    # greyscale MNIST-like images; about 8/255 for colour ones, whose clean answers a larger
    # universal change already moves: CIFAR-10's twin kept 82% of its answers at 0.1).
    adversarial: float | None = None
    # Share of the rows that the universal perturbation leaves (the whole batch without it)
    # stamped with a random trigger from the de-trigger AE's sampler, labelled with the clean
    # image's class: the twin learns to give a patched, blended, warped or filtered image the
    # class of the image beneath, so a backdoor keyed to any such change loses its path, also a
    # patch backdoor that the fine-tune alone keeps. 0: none.
    triggers: float = 0.5
    trigger_families: str = "extended"  # a FAMILY_SETS name (training.data.trigger_sampler)
    trigger_exclude: tuple[str, ...] = ()  # family names, kinds or patterns left out

    def problems(self) -> list[str]:
        out = []
        if self.epochs < 1:
            out.append(f"twin epochs must be >= 1, got {self.epochs}")
        if not 0 < self.lr <= 1:
            out.append(f"twin learning rate must lie in (0, 1], got {self.lr}")
        if self.images < self.batch_size:
            out.append(f"twin images must be >= its batch size {self.batch_size}")
        if self.shift < 0:
            out.append(f"twin shift must be >= 0, got {self.shift}")
        if not 0 <= self.head_penalty <= 10:
            out.append(f"twin head penalty must lie in [0, 10], got {self.head_penalty}")
        if self.adversarial is not None and not 0 <= self.adversarial <= 1:
            out.append(f"twin adversarial radius must lie in [0, 1], got {self.adversarial}")
        if not 0 <= self.triggers <= 1:
            out.append(f"twin trigger share must lie in [0, 1], got {self.triggers}")
        if self.trigger_families not in FAMILY_SETS:
            out.append(
                f"twin trigger families {self.trigger_families!r}: not one of "
                f"{', '.join(FAMILY_SETS)}"
            )
        else:
            try:
                SamplerSpec(
                    families=FAMILY_SETS[self.trigger_families], exclude=self.trigger_exclude
                ).active()
            except ValueError as e:
                out.append(f"twin trigger families: {e}")
        return out


def adversarial_radius(cfg: TwinConfig, channels: int) -> float:
    """The universal perturbation's radius for images of ``channels`` channels (None: by them:
    AUTO_RADIUS, greyscale or colour)."""
    if cfg.adversarial is not None:
        return cfg.adversarial
    return AUTO_RADIUS[1 if channels == 1 else 3]


def _labels(model: torch.nn.Module, images: np.ndarray, device: str = "cpu") -> torch.Tensor:
    """The target's class of each uint8 image (N, C, H, W), as it is."""
    out = []
    with torch.no_grad():
        for start in range(0, len(images), 256):
            x = torch.from_numpy(images[start : start + 256]).to(device).float().div_(255.0)
            out.append(model(x).argmax(1))
    return torch.cat(out)


def agreement(
    a: torch.nn.Module, b: torch.nn.Module, images: np.ndarray, device: str = "cpu"
) -> float:
    """Share of the uint8 images on which the two classifiers give the same class."""
    return float((_labels(a, images, device) == _labels(b, images, device)).float().mean())


def reinit_final_layer(model: OnnxModule, g: torch.Generator, std: float = 0.01) -> None:
    """The final linear layer (the last Gemm / MatMul) drawn anew, in place: its weight from
    N(0, std^2), a Gemm's bias zeroed (a MatMul's separate Add keeps its constant)."""
    final = model.final
    weight = model.param(final.input[1])
    with torch.no_grad():
        weight.copy_(torch.randn(weight.shape, generator=g) * std)
        if final.op_type == "Gemm" and len(final.input) > 2 and final.input[2]:
            model.param(final.input[2]).zero_()


def _batches(n: int, batch_size: int, g: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches of n images, pass after pass, each pass in a fresh order drawn from g."""
    while True:
        perm = torch.randperm(n, generator=g)
        for start in range(0, n, batch_size):
            yield perm[start : start + batch_size]


def _adversarial(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ascent step of the universal perturbation delta on the first half of the batch, and
    the batch with that half perturbed."""
    half = len(x) // 2
    d = delta.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model((x[:half] + d).clamp(0, 1)), y[:half]), d)
    delta = (delta + eps / 4 * grad.sign()).clamp(-eps, eps)
    x = torch.cat([(x[:half] + delta).clamp(0, 1), x[half:]])
    return delta, x


def _stamp(
    x: torch.Tensor, start: int, share: float, rng: np.random.Generator, spec: SamplerSpec
) -> torch.Tensor:
    """The batch with a random trigger on the first ``share`` of its rows from ``start`` on
    (drawn on the CPU from rng)."""
    stop = start + round(share * (len(x) - start))
    if stop == start:
        return x
    stamped = sample_triggers(x[start:stop].cpu(), rng, spec).images.to(x.device)
    return torch.cat([x[:start], stamped, x[stop:]])


def _set_norm(weight: torch.Tensor, norm: torch.Tensor) -> None:
    with torch.no_grad():
        weight.mul_(norm / weight.norm().clamp_min(1e-12))


def fine_tune_twin(
    target: Path,
    train: np.ndarray,
    val: np.ndarray,
    out: Path,
    cfg: TwinConfig,
    progress: bool = True,
    log: Callable[[str], Any] = print,
    device: str = "cpu",
    time_budget: float | None = None,
) -> dict[str, Any]:
    """Fine-tune a copy of the ONNX classifier ``target`` (float32 NCHW in [0, 1]) on the uint8
    ``train`` images (N, C, H, W) labelled with its own classes, write it to ``out`` (the
    target's graph with the new weights) and return the record: the recipe, the images used,
    the twin's agreement with the target on the ``val`` images, and the time taken. ``device``:
    where torch trains it (fit's --device, resolved). ``time_budget`` (seconds): the learning
    rate decays on its clock when that runs ahead of the steps, and the fine-tune ends when it is
    spent (the record says so)."""
    for problem in cfg.problems():
        raise ValueError(problem)
    t0 = time.time()
    rng = np.random.default_rng([cfg.seed, 2])
    pick = np.sort(rng.permutation(len(train))[: cfg.images])
    images = train[pick]
    reference = load_onnx_module(target).to(device)
    labels = _labels(reference, images, device)
    twin = load_onnx_module(target).to(device)
    head = twin.param(twin.final.input[1])
    head0 = reference.param(reference.final.input[1]).detach()
    norm = head0.norm()
    if cfg.reinit_head:
        reinit_final_layer(twin, torch.Generator().manual_seed(cfg.seed))
    if cfg.head_penalty:
        _set_norm(head, norm)
    for p in twin.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(twin.parameters(), lr=cfg.lr)
    # An epoch is `images` images' worth of steps, however many the folder has: a fresh head
    # needs its hundreds of steps, and a small folder is gone through more often instead.
    per_epoch = math.ceil(cfg.images / cfg.batch_size)
    steps = cfg.epochs * per_epoch
    g = torch.Generator().manual_seed(cfg.seed)
    batches = _batches(len(images), cfg.batch_size, g)
    delta = torch.zeros(1, *images.shape[1:], device=device)
    radius = adversarial_radius(cfg, images.shape[1])
    spec = SamplerSpec(families=FAMILY_SETS[cfg.trigger_families], exclude=cfg.trigger_exclude)
    trigger_rng = np.random.default_rng([cfg.seed, 3])
    losses: list[float] = []
    step, t_train = 0, time.time()
    for epoch in range(cfg.epochs):
        twin.train()
        total, seen = 0.0, 0
        bar = tqdm(range(per_epoch), f"twin epoch {epoch + 1}", disable=not progress, mininterval=5)
        for _ in bar:
            # linear decay to 0, on the budget's clock when that is further on
            frac = autoencoder.progress(step, steps, time.time() - t_train, time_budget)
            if frac >= 1.0:  # before the last step only when the time budget is spent
                break
            for group in opt.param_groups:
                group["lr"] = cfg.lr * (1.0 - frac)
            sel = next(batches)
            x = torch.from_numpy(images[sel.numpy()]).to(device).float().div_(255.0)
            if cfg.shift:  # the offsets drawn from the CPU generator g
                x = random_translate(x, g, cfg.shift)
            y = labels[sel]
            if radius:
                delta, x = _adversarial(twin, x, y, delta, radius)
            if cfg.triggers:
                x = _stamp(x, len(x) // 2 if radius else 0, cfg.triggers, trigger_rng, spec)
            loss = F.cross_entropy(twin(x), y)
            if cfg.head_penalty:
                loss = loss + cfg.head_penalty * (head * head0).sum() / norm**2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if cfg.head_penalty:
                _set_norm(head, norm)
            step += 1
            total += loss.item() * len(sel)
            seen += len(sel)
        if seen:
            losses.append(round(total / seen, 5))
            log(f"twin: epoch {epoch + 1}/{cfg.epochs}, loss {losses[-1]:.4f}")
        if step < (epoch + 1) * per_epoch:
            log(
                f"twin: the time budget of {time_budget:.0f} s ended the fine-tune after {step} "
                f"of {steps} steps, its learning rate decayed on the budget's clock"
            )
            break
    twin.eval()
    agree = agreement(reference, twin, val, device)
    write_onnx(twin.cpu(), out)
    record = {
        "method": "fine-tune",
        "config": asdict(cfg),
        "images": int(len(images)),
        "adversarial_radius": radius,
        "epoch_losses": losses,
        "steps": step,
        "stopped_by_budget": step < steps,
        "time_budget": time_budget,
        "val_agreement": round(agree, 5),
        "val_images": int(len(val)),
        "wall_seconds": round(time.time() - t0, 1),
    }
    log(
        f"twin: fine-tuned on {len(images)} images in {record['wall_seconds']:.0f} s; it gives "
        f"the target's class on {100 * agree:.2f}% of {len(val)} validation images"
    )
    return record
