"""Triggers that are not stamped patterns but transforms of the whole image (issue 22, item 1),
as batch-vectorised numpy on float images (N, C, H, W) in [0, 1]. Every function takes its
parameters per image, so that a fixed backdoor trigger (training.data.triggers.Trigger: one set
of parameters, fixed by a seed) and the de-trigger AE's random sampler
(training.data.trigger_sampler: parameters drawn per image) share one implementation.

- warp: a smooth displacement field (WaNet, Nguyen & Tran, ICLR 2021): a random k x k grid of
  2-D offsets, scaled to a mean length of `strength` pixels, upsampled to the image and applied
  by bilinear resampling (pixels outside are the edge's);
- filter: a global photo filter: gamma, contrast, tint (a per-channel gain) or vignette, of
  strength `amount` in [0, 1];
- frequency: x + amplitude * p, p a sum of a few cosine waves of mid-to-high frequency (a
  frequency-domain trigger in the spirit of FTrojan), clipped to [0, 1];
- dynamic: an input-specific trigger (after Input-Aware Dynamic Backdoor, Nguyen & Tran,
  NeurIPS 2020): a fixed, random, untrained convolutional generator G gives each image its own
  pattern G_p(x) and its own mask, the `density` share of pixels where G_m(x) is largest, so
  both what is written and where depend on the image. The paper trains its generator with a
  diversity loss; this one is random, which keeps the trigger a function of the image and the
  seed alone.
"""

from __future__ import annotations

import numpy as np

FILTERS = ("gamma", "contrast", "tint", "vignette")
KINDS = ("warp", "filter", "frequency", "dynamic")  # the trigger kinds this module implements


def linear_weights(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation matrix from n_in grid points spread over n_out pixels."""
    t = np.linspace(0.0, n_in - 1.0, n_out)
    lo = np.minimum(np.floor(t).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (t - lo).astype(np.float32)
    w = np.zeros((n_out, n_in), np.float32)
    w[np.arange(n_out), lo] += 1.0 - frac
    w[np.arange(n_out), hi] += frac
    return w


def upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """(..., k, k) grid values -> (..., h, w), bilinearly."""
    k1, k2 = grid.shape[-2:]
    return np.einsum("hi,...ij,wj->...hw", linear_weights(h, k1), grid, linear_weights(w, k2))


def warp_field(control: np.ndarray, h: int, w: int, strength: np.ndarray) -> np.ndarray:
    """Displacements (N, 2, H, W) in pixels (rows, columns) from control offsets (N, 2, k, k) in
    [-1, 1]: each image's grid scaled to a mean absolute offset of 1, upsampled, times its
    `strength` (N,) in pixels."""
    control = np.asarray(control, np.float32)
    scale = np.abs(control).mean(axis=(1, 2, 3), keepdims=True)
    field = upsample(control / np.maximum(scale, 1e-6), h, w)
    return field * np.asarray(strength, np.float32).reshape(-1, 1, 1, 1)


def warp(x: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """x (N, C, H, W) resampled at (row + d_row, col + d_col), displacement (N, 2, H, W) in
    pixels; bilinear, coordinates clamped to the image (its edge pixels repeat)."""
    n, _, h, w = x.shape
    rows = np.clip(np.arange(h, dtype=np.float32)[:, None] + displacement[:, 0], 0, h - 1)
    cols = np.clip(np.arange(w, dtype=np.float32)[None, :] + displacement[:, 1], 0, w - 1)
    r0 = np.minimum(np.floor(rows).astype(np.int64), h - 2 if h > 1 else 0)
    c0 = np.minimum(np.floor(cols).astype(np.int64), w - 2 if w > 1 else 0)
    r1, c1 = np.minimum(r0 + 1, h - 1), np.minimum(c0 + 1, w - 1)
    fr, fc = (rows - r0)[:, None], (cols - c0)[:, None]  # (N, 1, H, W)
    b = np.arange(n)[:, None, None, None]
    ch = np.arange(x.shape[1])[None, :, None, None]

    def at(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        return x[b, ch, r[:, None], c[:, None]]  # (N, C, H, W)

    top = at(r0, c0) * (1 - fc) + at(r0, c1) * fc
    bottom = at(r1, c0) * (1 - fc) + at(r1, c1) * fc
    return (top * (1 - fr) + bottom * fr).astype(x.dtype)


def photo_filter(
    x: np.ndarray, name: str, amount: np.ndarray, gains: np.ndarray | None = None
) -> np.ndarray:
    """A global filter of strength `amount` (N,) in [0, 1] on x (N, C, H, W):
    - gamma: x ** (1 / (1 + 2 * amount)) (mid-tones lifted);
    - contrast: 0.5 + (1 + 2 * amount) * (x - 0.5), clipped;
    - tint: x * (1 + amount * g), g (N, C) in [-1, 1] (a per-channel gain), clipped;
    - vignette: x * (1 - amount * r^2), r the distance from the centre, 1 at a corner."""
    a = np.asarray(amount, np.float32).reshape(-1, 1, 1, 1)
    if name == "gamma":
        out = np.power(np.clip(x, 0.0, 1.0), 1.0 / (1.0 + 2.0 * a))
    elif name == "contrast":
        out = 0.5 + (1.0 + 2.0 * a) * (x - 0.5)
    elif name == "tint":
        if gains is None:
            raise ValueError("a tint needs per-channel gains")
        out = x * (1.0 + a * np.asarray(gains, np.float32)[:, :, None, None])
    elif name == "vignette":
        h, w = x.shape[-2:]
        r = np.linspace(-1.0, 1.0, h)[:, None] ** 2 + np.linspace(-1.0, 1.0, w)[None, :] ** 2
        out = x * (1.0 - a * (r / 2.0).astype(np.float32))
    else:
        raise ValueError(f"unknown filter {name!r}; allowed: {', '.join(FILTERS)}")
    return np.clip(out, 0.0, 1.0).astype(x.dtype)


def wave_pattern(frequencies: np.ndarray, phases: np.ndarray, h: int, w: int) -> np.ndarray:
    """(N, H, W) in [-1, 1]: per image the sum of cosines with integer frequencies
    (N, K, 2) (cycles per image height / width) and phases (N, K), divided by its peak."""
    i = np.arange(h, dtype=np.float32)[None, None, :, None] / h
    j = np.arange(w, dtype=np.float32)[None, None, None, :] / w
    f = np.asarray(frequencies, np.float32)
    arg = 2 * np.pi * (f[..., 0, None, None] * i + f[..., 1, None, None] * j)
    waves = np.cos(arg + np.asarray(phases, np.float32)[..., None, None]).sum(axis=1)
    return waves / np.maximum(np.abs(waves).max(axis=(1, 2), keepdims=True), 1e-6)


def add_waves(x: np.ndarray, waves: np.ndarray, amplitude: np.ndarray) -> np.ndarray:
    """clip(x + amplitude * waves, 0, 1): x (N, C, H, W), waves (N, H, W) in [-1, 1] (every
    channel alike), amplitude (N,)."""
    a = np.asarray(amplitude, np.float32).reshape(-1, 1, 1, 1)
    return np.clip(x + a * waves[:, None], 0.0, 1.0)


def wave_frequencies(rng: np.random.Generator, n: int, k: int, h: int, w: int) -> np.ndarray:
    """(n, k, 2) integer frequencies in the upper half of what h x w can hold (from a quarter to
    half the side's length in cycles), a random sign on the column one (waves at both slants)."""
    rows = rng.integers(max(1, h // 4), max(2, h // 2) + 1, (n, k))
    cols = rng.integers(max(1, w // 4), max(2, w // 2) + 1, (n, k)) * rng.choice([-1, 1], (n, k))
    return np.stack([rows, cols], axis=-1)


def _conv3(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """x (N, Ci, H, W), weights (N or 1, Co, Ci, 3, 3): 3x3 convolution per image, edges
    repeated (same size out)."""
    n, _, h, w = x.shape
    weights = np.broadcast_to(weights, (n, *weights.shape[1:]))
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    out = 0.0
    for di in range(3):
        for dj in range(3):
            shifted = padded[:, :, di : di + h, dj : dj + w]  # (N, Ci, H, W)
            out = out + np.einsum("nihw,noi->nohw", shifted, weights[..., di, dj])
    return out


class Generator:
    """A random, untrained two-layer conv generator: `hidden` 3x3 filters and tanh, then a 1x1
    layer to C pattern channels (a sigmoid) and a 3x3 one to the mask score. Weights (with a
    leading image axis, 1 for one generator shared by all images) are drawn from `rng`."""

    def __init__(self, rng: np.random.Generator, channels: int, n: int = 1, hidden: int = 8):
        s1 = 1.0 / np.sqrt(9 * channels)
        self.w1 = rng.normal(0, 3 * s1, (n, hidden, channels, 3, 3)).astype(np.float32)
        self.b1 = rng.normal(0, 0.5, (n, hidden, 1, 1)).astype(np.float32)
        self.wp = rng.normal(0, 3 / np.sqrt(hidden), (n, channels, hidden)).astype(np.float32)
        self.wm = rng.normal(0, 1 / np.sqrt(9 * hidden), (n, 1, hidden, 3, 3)).astype(np.float32)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pattern (N, C, H, W) in (0, 1), mask score (N, H, W)) for images x (N, C, H, W)."""
        hidden = np.tanh(_conv3(2 * x - 1, self.w1) + self.b1)
        wp = np.broadcast_to(self.wp, (len(x), *self.wp.shape[1:]))
        pattern = 1 / (1 + np.exp(-np.einsum("nkhw,nck->nchw", hidden, wp)))
        return pattern.astype(np.float32), _conv3(hidden, self.wm)[:, 0]


def dynamic(
    x: np.ndarray, generator: Generator, density: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(triggered x, mask (N, 1, H, W) bool): each image overwritten with its own pattern on
    the `density` (N,) share of its pixels where its mask score is largest."""
    n, _, h, w = x.shape
    pattern, score = generator(x)
    k = np.maximum(1, np.round(np.asarray(density, np.float32) * h * w).astype(int))
    flat = score.reshape(n, -1)
    order = np.argsort(-flat, axis=1, kind="stable")
    mask = np.zeros_like(flat, bool)
    rows = np.repeat(np.arange(n), k)
    mask[rows, np.concatenate([order[i, : k[i]] for i in range(n)])] = True
    mask = mask.reshape(n, 1, h, w)
    return np.where(mask, pattern, x).astype(x.dtype), mask
