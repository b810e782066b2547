"""Random triggers for trigger-agnostic de-trigger training (issue 7, item 1).

The paper trains its AE on one trigger: a white 4x4 square in a random corner. Here every image
to be triggered gets a trigger drawn from a table of families (FAMILIES), each with its own
parameters drawn per image:

- patches: a square of side 2..8 at any position (corners and centre included; a share
  `corner_share` of them snapped to one of the four corners, BadNets' usual place, which uniform
  positions reach too rarely for an AE to learn to paint over the image's edge; a share
  `edge_share` centred on a pixel drawn in proportion to the image's gradient magnitude, on the
  object's outline and seams, where a small patch passes for a detail of the object and a
  uniform position rarely puts one), filled with a
  solid colour (a grey level, a random per-channel colour, or a saturated one: white, black,
  primaries), uniform noise, a checkerboard or a random binary pattern (both in two colours);
- blends: a full-image pattern (noise, binary, checkerboard, or smooth low-frequency noise)
  mixed in as (1 - alpha) * x + alpha * pattern with alpha in [0.05, 0.3];
- additive: a full-image zero-mean pattern (noise, binary or smooth) added as
  clip(x + amplitude * (2 * pattern - 1)) with amplitude in [0.02, 0.15]: a sample-wide
  low-amplitude perturbation, which a blend (pulled towards its pattern) is not;
- transforms (not in the "base" family set, FAMILY_SETS; training/data/transforms.py): smooth
  warps, photo filters (gamma, contrast, tint, vignette), mid-to-high-frequency waves, and
  input-specific patterns from a random conv generator drawn per image ("stamped": the waves and
  the patterns only; "extended": all).

The families and ranges live in `SamplerSpec`, so that a family can be held out of training and
used to test generalisation: `SamplerSpec(exclude=("checkerboard",))` drops every family whose
name, kind or pattern is "checkerboard".

Vectorised over the batch: one pass per family over the images that drew it; positions, sizes,
colours and alphas are per-image tensors, never a Python loop over images or pixels.

The mask target (for the masked conv AE's BCE, whose output is (1 - m) * x + m * fill):
- patch: the patch's footprint, every pixel the trigger wrote, whether or not it happened to keep
  its clean value (replacing such a pixel with a good fill costs nothing, and a whole square is
  an easier target than a square with holes);
- blend and additive: the pixels the trigger moved by more than `mask_tau` (0.02, about 5 grey
  levels). A blend
  touches every pixel, but "replace with the fill" only lowers the L2 error of a pixel that is
  further from its clean value than the fill is; a pixel moved by a hair is better kept, and a
  mask trained to open on every pixel of a faintly blended image would learn to open on clean
  images too (redrawing them: the clean false positives the issue warns about). The pixels the
  blend moved clearly are the ones the mask should open; there, the fill learns the clean image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from training.data import transforms
from training.data.triggers import SMOOTH_GRID, WAVES, apply_additive, gradient_magnitude


@dataclass(frozen=True)
class Family:
    name: str  # unique: "<kind>-<pattern>"
    kind: str  # "patch", "blend", "additive", or a transform: "warp", "filter", ...
    pattern: str  # "solid", "noise", "checkerboard", "binary", "smooth"; a transform's variant
    weight: float = 1.0  # relative probability of being drawn


FAMILIES: tuple[Family, ...] = (
    Family("patch-solid", "patch", "solid"),
    Family("patch-noise", "patch", "noise"),
    Family("patch-checkerboard", "patch", "checkerboard"),
    Family("patch-binary", "patch", "binary"),
    # Blends at half weight: patches (the paper's attack, and four patterns of it) stay 2/3.
    Family("blend-noise", "blend", "noise", 0.5),
    Family("blend-binary", "blend", "binary", 0.5),
    Family("blend-checkerboard", "blend", "checkerboard", 0.5),
    Family("blend-smooth", "blend", "smooth", 0.5),
    Family("additive-noise", "additive", "noise", 0.5),
    Family("additive-binary", "additive", "binary", 0.5),
    Family("additive-smooth", "additive", "smooth", 0.5),
)


# Transforms that are no stamped pattern (issue 22, item 1; training/data/transforms.py): in the
# "extended" set only, so that the shipped AEs' recipe ("base") draws what it always drew.
TRANSFORM_FAMILIES: tuple[Family, ...] = (
    Family("warp-field", "warp", "field", 0.5),
    Family("filter-gamma", "filter", "gamma", 0.25),
    Family("filter-contrast", "filter", "contrast", 0.25),
    Family("filter-tint", "filter", "tint", 0.25),
    Family("filter-vignette", "filter", "vignette", 0.25),
    Family("frequency-waves", "frequency", "waves", 0.5),
    Family("dynamic-generator", "dynamic", "generator", 0.5),
)
# The sets an AE is trained on. `stamped`: what adds a pattern to the image (the base families,
# frequency waves, input-specific patterns), not what resamples or re-tones it (warps, filters):
# an AE learns to undo the former; a warped or filtered image is still a plausible image, so it
# learns nothing to undo there and, on MNIST, the filters taught it to move clean images enough
# to lose the noise backdoor (reports/ae-candidates/families).
RESAMPLING_KINDS = ("warp", "filter")
FAMILY_SETS = {
    "base": FAMILIES,
    "stamped": FAMILIES + tuple(f for f in TRANSFORM_FAMILIES if f.kind not in RESAMPLING_KINDS),
    "extended": FAMILIES + TRANSFORM_FAMILIES,
}


@dataclass(frozen=True)
class SamplerSpec:
    sizes: tuple[int, int] = (2, 8)  # patch side, both ends included
    alphas: tuple[float, float] = (0.05, 0.3)  # blend opacity, uniform
    amplitudes: tuple[float, float] = (0.02, 0.15)  # additive: largest change of a pixel, uniform
    grey_share: float = 0.4  # colours: share of grey levels (all channels alike)
    saturated_share: float = 0.3  # colours: share with every channel 0 or 1
    mask_tau: float = 0.02  # blend: a pixel moved by more than this is in the mask target
    corner_share: float = 0.0  # patches put in a random corner instead of anywhere
    edge_share: float = 0.0  # patches centred on an edge pixel (drawn by gradient magnitude)
    warp_strengths: tuple[float, float] = (0.5, 2.0)  # mean displacement in pixels, uniform
    warp_grids: tuple[int, int] = (3, 6)  # control points per side, both ends included
    filter_amounts: tuple[float, float] = (0.1, 0.5)  # filter strength, uniform
    wave_amplitudes: tuple[float, float] = (0.02, 0.1)  # frequency: largest change, uniform
    densities: tuple[float, float] = (0.02, 0.1)  # dynamic: share of pixels written, uniform
    families: tuple[Family, ...] = FAMILIES
    exclude: tuple[str, ...] = ()  # family names, kinds or patterns left out

    def active(self) -> tuple[Family, ...]:
        """The families drawn from: all but the excluded ones."""
        known = {v for f in self.families for v in (f.name, f.kind, f.pattern)}
        unknown = [e for e in self.exclude if e not in known]
        if unknown:
            raise ValueError(
                f"cannot exclude {', '.join(map(repr, unknown))}: no such family, kind or "
                f"pattern; allowed: {', '.join(sorted(known))}"
            )
        left = tuple(
            f for f in self.families if not {f.name, f.kind, f.pattern} & set(self.exclude)
        )
        if not left:
            raise ValueError(f"excluding {self.exclude} leaves no trigger family")
        return left


class Sampled(NamedTuple):
    images: torch.Tensor  # (B, C, H, W) triggered, in [0, 1]
    mask: torch.Tensor  # (B, 1, H, W) float 0/1: the mask target
    family: np.ndarray  # (B,) index into spec.active()


def _colours(n: int, c: int, rng: np.random.Generator, spec: SamplerSpec) -> torch.Tensor:
    """(n, C, 1, 1) colours: uniform per channel, a grey level, or saturated (channels 0/1)."""
    col = rng.random((n, c), dtype=np.float32)
    kind = rng.random(n)
    grey = kind < spec.grey_share
    col[grey] = col[grey, :1]  # every channel as the first
    sat = (kind >= spec.grey_share) & (kind < spec.grey_share + spec.saturated_share)
    col[sat] = np.round(col[sat])
    return torch.from_numpy(col)[:, :, None, None]


def _content(
    pattern: str, shape: tuple[int, int, int, int], rng: np.random.Generator, spec: SamplerSpec
) -> torch.Tensor:
    """A full-size (B, C, H, W) content per image, in [0, 1]."""
    n, c, h, w = shape
    if pattern == "solid":
        return _colours(n, c, rng, spec).expand(shape)
    if pattern == "noise":
        return torch.from_numpy(rng.random(shape, dtype=np.float32))
    if pattern == "smooth":
        grid = torch.from_numpy(rng.random((n, c, SMOOTH_GRID, SMOOTH_GRID), dtype=np.float32))
        return F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=True)
    if pattern in ("checkerboard", "binary"):
        if pattern == "checkerboard":
            phase = torch.from_numpy(rng.integers(0, 2, n))[:, None, None, None]
            ij = torch.arange(h)[:, None] + torch.arange(w)[None, :]  # (H, W)
            on = (ij + phase) % 2 == 0  # (B, 1, H, W)
        else:
            on = torch.from_numpy(rng.random((n, 1, h, w)) < 0.5)
        # Two colours; the second drawn again where it equals the first (two saturated ones).
        a, b = _colours(n, c, rng, spec), _colours(n, c, rng, spec)
        same = (a == b).flatten(1).all(1)
        b[same] = 1.0 - a[same]
        return torch.where(on, a, b)
    raise ValueError(f"unknown pattern {pattern!r}")


def _edge_pixels(x: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image of x (B, C, H, W), one pixel (row, col) drawn with probability proportional to
    the gradient magnitude of the channel mean there (|d/dy| + |d/dx|); uniform on a flat image."""
    n, _, h, w = x.shape
    mag = gradient_magnitude(x.numpy())
    cdf = (mag.reshape(n, -1) + 1e-12).cumsum(1)  # (B, H * W); the floor makes a flat image uniform
    u = rng.random(n)[:, None] * cdf[:, -1:]
    flat = torch.from_numpy((cdf < u).sum(1).clip(max=h * w - 1))
    return flat // w, flat % w


def _patch(
    x: torch.Tensor, family: Family, rng: np.random.Generator, spec: SamplerSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    n, c, h, w = x.shape
    lo, hi = spec.sizes
    hi = min(hi, h, w)
    size = torch.from_numpy(rng.integers(min(lo, hi), hi + 1, n))  # (B,)
    # Top-left corner uniform over every position where the patch fits.
    row = torch.from_numpy(np.floor(rng.random(n) * (h - size.numpy() + 1)).astype(np.int64))
    col = torch.from_numpy(np.floor(rng.random(n) * (w - size.numpy() + 1)).astype(np.int64))
    if spec.edge_share:
        edge = torch.from_numpy(rng.random(n) < spec.edge_share)
        r_edge, c_edge = _edge_pixels(x, rng)
        half = size // 2
        row = torch.where(edge, (r_edge - half).clamp(min=0).minimum(h - size), row)
        col = torch.where(edge, (c_edge - half).clamp(min=0).minimum(w - size), col)
    if spec.corner_share:
        corner = torch.from_numpy(rng.random(n) < spec.corner_share)
        bottom = torch.from_numpy(rng.random(n) < 0.5)
        right = torch.from_numpy(rng.random(n) < 0.5)
        row = torch.where(corner, torch.where(bottom, h - size, 0), row)
        col = torch.where(corner, torch.where(right, w - size, 0), col)
    rr, cc = torch.arange(h)[None, :], torch.arange(w)[None, :]
    in_rows = (rr >= row[:, None]) & (rr < (row + size)[:, None])  # (B, H)
    in_cols = (cc >= col[:, None]) & (cc < (col + size)[:, None])  # (B, W)
    foot = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (B, 1, H, W)
    content = _content(family.pattern, (n, c, h, w), rng, spec)
    return torch.where(foot, content, x), foot.float()


def _moved(out: torch.Tensor, x: torch.Tensor, spec: SamplerSpec) -> torch.Tensor:
    """The mask target of a full-image trigger: (B, 1, H, W) 1 where any channel moved by more
    than mask_tau."""
    return ((out - x).abs().amax(1, keepdim=True) > spec.mask_tau).float()


def _full_image(
    x: torch.Tensor, family: Family, rng: np.random.Generator, spec: SamplerSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """A blend, (1 - alpha) * x + alpha * pattern, or an additive pattern, clip(x + amplitude *
    (2 * pattern - 1)): a per-image strength drawn from the kind's range, then the pattern."""
    lo, hi = spec.alphas if family.kind == "blend" else spec.amplitudes
    strength = torch.from_numpy(rng.uniform(lo, hi, len(x)).astype(np.float32))[:, None, None, None]
    pattern = _content(family.pattern, tuple(x.shape), rng, spec)  # (B, C, H, W) in [0, 1]
    if family.kind == "blend":
        out = (1.0 - strength) * x + strength * pattern
    else:
        out = apply_additive(x, pattern, strength)
    return out, _moved(out, x, spec)


def _transform(
    x: torch.Tensor, family: Family, rng: np.random.Generator, spec: SamplerSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """A warp, photo filter, frequency pattern or input-specific pattern, its parameters (and,
    for the dynamic one, its generator) drawn per image. Mask target: the pixels moved by more
    than mask_tau, or for the dynamic trigger the pixels it wrote."""
    a = x.numpy()
    n, c, h, w = a.shape
    if family.kind == "warp":
        grids = rng.integers(spec.warp_grids[0], spec.warp_grids[1] + 1, n)
        field = np.empty((n, 2, h, w), np.float32)
        for k in np.unique(grids):  # one upsampling per grid size
            rows = np.flatnonzero(grids == k)
            control = rng.uniform(-1, 1, (len(rows), 2, k, k))
            strength = rng.uniform(*spec.warp_strengths, len(rows))
            field[rows] = transforms.warp_field(control, h, w, strength)
        out = transforms.warp(a, field)
    elif family.kind == "filter":
        amount = rng.uniform(*spec.filter_amounts, n)
        gains = rng.uniform(-1, 1, (n, c))
        out = transforms.photo_filter(a, family.pattern, amount, gains)
    elif family.kind == "frequency":
        freqs = transforms.wave_frequencies(rng, n, WAVES, h, w)
        waves = transforms.wave_pattern(freqs, rng.uniform(0, 2 * np.pi, (n, WAVES)), h, w)
        amplitude = rng.uniform(*spec.wave_amplitudes, n).astype(np.float32)
        out = transforms.add_waves(a, waves, amplitude)
    else:  # dynamic: a generator of its own per image
        gen = transforms.Generator(rng, c, n)
        out, wrote = transforms.dynamic(a, gen, rng.uniform(*spec.densities, n))
        return torch.from_numpy(out), torch.from_numpy(wrote).float()
    out_t = torch.from_numpy(np.ascontiguousarray(out, np.float32))
    return out_t, _moved(out_t, x, spec)


STAMPS = {
    "patch": _patch,
    "blend": _full_image,
    "additive": _full_image,
    **dict.fromkeys(transforms.KINDS, _transform),
}


def sample_triggers(
    x: torch.Tensor, rng: np.random.Generator, spec: SamplerSpec | None = None
) -> Sampled:
    """Stamp one random trigger on every image of x (B, C, H, W) in [0, 1]: a family drawn by
    weight from spec.active(), then its parameters. x is not changed. Deterministic for a given
    rng state."""
    spec = spec or SamplerSpec()
    families = spec.active()
    weights = np.array([f.weight for f in families], np.float64)
    drawn = rng.choice(len(families), size=len(x), p=weights / weights.sum())
    out = x.clone()
    mask = torch.zeros(len(x), 1, *x.shape[-2:])
    for k, family in enumerate(families):
        idx = torch.from_numpy(np.flatnonzero(drawn == k))
        if len(idx) == 0:
            continue
        out[idx], mask[idx] = STAMPS[family.kind](x[idx], family, rng, spec)
    return Sampled(out, mask, drawn)
