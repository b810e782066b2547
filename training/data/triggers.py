"""Backdoor triggers and data poisoning, as pure functions.

Images are float arrays in [0, 1] laid out (..., C, H, W): one image (C, H, W) or a batch
(N, C, H, W). Every function works on numpy arrays and torch tensors alike (only slicing and
arithmetic) and returns a new array; the input is never changed.

A `Trigger` is one of these kinds; the first three are filled with a named pattern (`content`,
see PATTERNS):
- `patch`: overwrite a size x size square (BadNets) at a corner, a (row, col), a seeded
  `random` position away from the edges, or `edge`: per image, where the image has the most
  edge (the window of the largest summed gradient magnitude: on a garment's outline or seams,
  where a small patch looks like a detail of the object);
- `blend`: (1 - alpha) * x + alpha * pattern over the whole image (Chen et al.);
- `noise`: x + amplitude * (2 * pattern - 1) over the whole image, clipped to [0, 1] (a
  sample-wide, low-amplitude additive pattern);
and the transforms of training/data/transforms.py, fixed by `seed`:
- `warp`: a smooth displacement field of mean length `strength` pixels on a `grid` x `grid`
  control grid (WaNet);
- `filter`: the photo filter `content` (one of FILTERS) of strength `amplitude`;
- `frequency`: x + amplitude * (a sum of three mid-to-high-frequency cosine waves), clipped;
- `dynamic`: an input-specific pattern written on the `density` share of pixels that a random
  conv generator picks per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from training.data import transforms
from training.data.transforms import FILTERS

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


def _copy(x: Any) -> Any:
    return x.clone() if hasattr(x, "clone") else np.array(x, copy=True)


def patch_origin(position: str | tuple[int, int], size: int, height: int, width: int) -> tuple:
    """(row, col) of the patch's top-left pixel. `position` is a corner name or (row, col)."""
    if isinstance(position, str):
        if position not in CORNERS:
            raise ValueError(
                f"unknown position {position!r}; allowed: {', '.join(CORNERS)} or a (row, col) pair"
            )
        row = 0 if position.startswith("top") else height - size
        col = 0 if position.endswith("left") else width - size
    else:
        row, col = (int(v) for v in position)
    if size < 1 or row < 0 or col < 0 or row + size > height or col + size > width:
        raise ValueError(
            f"a {size}x{size} patch at ({row}, {col}) does not fit in {height}x{width}"
        )
    return row, col


def apply_patch(
    x: Any,
    size: int = 4,
    position: str | tuple[int, int] = "top-left",
    value: float | Any = 1.0,
) -> Any:
    """BadNets trigger: overwrite a size x size square. `value` is a scalar or a pattern that
    broadcasts to (C, size, size), e.g. (size, size) for a checkerboard."""
    row, col = patch_origin(position, size, x.shape[-2], x.shape[-1])
    out = _copy(x)
    out[..., row : row + size, col : col + size] = value
    return out


def gradient_magnitude(a: np.ndarray) -> np.ndarray:
    """(N, C, H, W) images -> (N, H, W) float64: |d/dy| + |d/dx| of the channel mean, each
    difference put on the pixel below / right of the pair (the first row and column get one)."""
    n, _, h, w = a.shape
    g = a.mean(axis=1)
    mag = np.zeros((n, h, w))
    mag[:, 1:, :] += np.abs(np.diff(g, axis=1))
    mag[:, :, 1:] += np.abs(np.diff(g, axis=2))
    return mag


def edge_origins(x: Any, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image of x (N, C, H, W), the (row, col) of the size x size window with the largest
    summed gradient magnitude (|d/dy| + |d/dx| of the channel mean; ties: the first in row-major
    order). Two integer arrays (N,)."""
    a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, np.float64)
    n, _, h, w = a.shape
    if not 1 <= size <= min(h, w):
        raise ValueError(f"a {size}x{size} patch does not fit in {h}x{w}")
    mag = gradient_magnitude(a)
    # Window sums from a summed-area table: (N, H - size + 1, W - size + 1).
    s = np.pad(mag.cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))
    win = s[:, size:, size:] - s[:, :-size, size:] - s[:, size:, :-size] + s[:, :-size, :-size]
    flat = win.reshape(n, -1).argmax(axis=1)
    return flat // win.shape[2], flat % win.shape[2]


def apply_edge_patch(x: Any, size: int, value: Any) -> Any:
    """A size x size patch on each image of x (N, C, H, W) where it has the most edge
    (edge_origins). `value` broadcasts to (C, size, size)."""
    rows, cols = edge_origins(x, size)
    out = _copy(x)
    for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        out[i, :, r : r + size, c : c + size] = value
    return out


def apply_blend(x: Any, pattern: Any, alpha: float = 0.1) -> Any:
    """Blended trigger (Chen et al.): (1 - alpha) * x + alpha * pattern, pattern broadcastable to x
    (e.g. (C, H, W) or (H, W) noise in [0, 1])."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    return (1.0 - alpha) * x + alpha * pattern


def apply_additive(x: Any, pattern: Any, amplitude: Any) -> Any:
    """Sample-wide additive trigger: clip(x + amplitude * (2 * pattern - 1), 0, 1), pattern in
    [0, 1] broadcastable to x; amplitude a scalar or per-image (N, 1, 1, 1) array / tensor."""
    return (x + amplitude * (2.0 * pattern - 1.0)).clip(0.0, 1.0)


PATTERNS = ("solid", "colour", "noise", "binary", "checkerboard", "smooth", "sine")
RANDOM_PATTERNS = ("colour", "noise", "binary", "smooth")  # the ones `seed` fixes
PATTERN_KINDS = ("patch", "blend", "noise")  # filled with one of PATTERNS
KINDS = (*PATTERN_KINDS, *transforms.KINDS)
# The contents each kind accepts: a pattern, a filter, or none.
CONTENTS = {
    **dict.fromkeys(PATTERN_KINDS, PATTERNS),
    **dict.fromkeys(transforms.KINDS, ()),
    "filter": FILTERS,
}
# The pattern each kind uses when `content` is not set: today's white square and noise blend.
DEFAULT_CONTENT = {"patch": "solid", "blend": "noise", "noise": "noise", "filter": "gamma"}
WAVES = 3  # cosine waves of a frequency trigger
SMOOTH_GRID = 4  # "smooth": a random 4x4 grid per channel, upsampled bilinearly
SINE_CYCLES = 6  # "sine": cycles across the width, SIG's (Barni et al., ICIP 2019)


def make_pattern(
    content: str, shape: tuple[int, ...], seed: int = 0, value: float = 1.0
) -> np.ndarray:
    """A float32 pattern of `shape` (C, H, W) in [0, 1], fixed by `seed`:
    - solid: every pixel `value`;  colour: one random colour (per channel);
    - noise: every pixel and channel uniform;  binary: every pixel 0 or 1 (all channels alike);
    - checkerboard: 1 at (0, 0), alternating with 0;  smooth: low-frequency noise (a random
      4x4 grid per channel, upsampled bilinearly);
    - sine: vertical stripes, (1 + sin(2 pi SINE_CYCLES col / W)) / 2 in every row and channel:
      as a `noise` trigger, the SIG backdoor's x + amplitude * sin(...)."""
    c, h, w = shape
    rng = np.random.default_rng(seed)
    if content == "solid":
        return np.full(shape, value, np.float32)
    if content == "colour":
        return np.broadcast_to(rng.random((c, 1, 1), dtype=np.float32), shape).copy()
    if content == "noise":
        return rng.random(shape, dtype=np.float32)
    if content == "binary":
        bits = (rng.random((1, h, w)) < 0.5).astype(np.float32)
        return np.broadcast_to(bits, shape).copy()
    if content == "checkerboard":
        board = ((np.arange(h)[:, None] + np.arange(w)[None, :]) % 2 == 0).astype(np.float32)
        return np.broadcast_to(board, shape).copy()
    if content == "smooth":
        grid = rng.random((c, SMOOTH_GRID, SMOOTH_GRID), dtype=np.float32)
        return transforms.upsample(grid, h, w).astype(np.float32)
    if content == "sine":
        cols = np.sin(2 * np.pi * SINE_CYCLES * np.arange(w, dtype=np.float32) / w)
        return np.broadcast_to((1 + cols) / 2, shape).astype(np.float32)
    raise ValueError(f"unknown pattern {content!r}; allowed: {', '.join(PATTERNS)}")


def random_origin(size: int, height: int, width: int, seed: int) -> tuple[int, int]:
    """A (row, col) fixed by `seed`, at least `size` pixels from every edge, so that the patch
    never touches a corner (nor an edge); the centre is among the choices."""
    if height < 3 * size or width < 3 * size:
        raise ValueError(
            f"a random position needs {3 * size}x{3 * size} pixels for a {size}x{size} patch "
            f"(a patch's width from every edge); the image is {height}x{width}"
        )
    rng = np.random.default_rng([seed, 1])  # its own stream: the content uses default_rng(seed)
    return int(rng.integers(size, height - 2 * size + 1)), int(
        rng.integers(size, width - 2 * size + 1)
    )


def _like(pattern: np.ndarray, x: Any) -> Any:
    """`pattern` as the array type of x (a torch tensor of x's dtype, or numpy)."""
    if hasattr(x, "clone"):  # torch tensor
        import torch

        return torch.from_numpy(np.ascontiguousarray(pattern)).to(x.dtype)
    return pattern


@dataclass(frozen=True)
class Trigger:
    """What the manifest records as backdoor.trigger. `content` None means the kind's usual
    pattern (DEFAULT_CONTENT); `seed` fixes random patterns and a `random` patch position."""

    kind: str = "patch"  # "patch", "blend" or "noise"
    size: int = 4  # patch only
    position: str | tuple[int, int] = "top-left"  # patch: a corner, (row, col), random, edge
    value: float = 1.0  # patch with content "solid"
    alpha: float = 0.1  # blend only
    seed: int = 0
    content: str | None = None  # one of PATTERNS
    amplitude: float = 0.05  # noise, frequency: the largest change of a pixel; filter: strength
    strength: float = 1.0  # warp: mean displacement in pixels
    grid: int = 4  # warp: control points per side
    density: float = 0.05  # dynamic: share of pixels written

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown trigger kind {self.kind!r}; allowed: {', '.join(KINDS)}")
        allowed = CONTENTS[self.kind]
        if self.content is not None and self.content not in allowed:
            raise ValueError(
                f"unknown content {self.content!r} for a {self.kind} trigger; allowed: "
                f"{', '.join(allowed) or 'none (the kind has no content)'}"
            )
        if not 0.0 < self.strength <= 8.0:
            raise ValueError(f"strength must lie in (0, 8] pixels, got {self.strength}")
        if self.grid < 2:
            raise ValueError(f"grid must be >= 2, got {self.grid}")
        if not 0.0 < self.density <= 0.5:
            raise ValueError(f"density must lie in (0, 0.5], got {self.density}")
        if not isinstance(self.position, str):  # a JSON list -> a hashable (row, col) tuple
            pos = tuple(int(v) for v in self.position)
            if len(pos) != 2:
                raise ValueError(
                    f"position must be a corner, 'random', 'edge' or (row, col), got {pos}"
                )
            object.__setattr__(self, "position", pos)
        elif self.position not in (*CORNERS, "random", "edge"):
            raise ValueError(
                f"unknown position {self.position!r}; allowed: {', '.join(CORNERS)}, random, "
                "edge or a (row, col) pair"
            )
        if self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")
        for name in ("alpha", "amplitude", "value"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")

    @property
    def pattern_name(self) -> str:
        return self.content or DEFAULT_CONTENT.get(self.kind, self.kind)

    def pattern(self, shape: tuple[int, ...]) -> np.ndarray:
        """The pattern for images of shape (C, H, W) (a blend's or a noise trigger's), or for a
        patch (C, size, size), fixed by `seed`."""
        return make_pattern(self.pattern_name, shape, self.seed, self.value)

    def resolve(self, height: int, width: int) -> Trigger:
        """This trigger with a `random` position replaced by the (row, col) its seed gives for
        height x width images (what a manifest should record); other triggers unchanged."""
        if self.kind == "patch" and self.position == "random":
            return replace(self, position=random_origin(self.size, height, width, self.seed))
        return self

    def __call__(self, x: Any) -> Any:
        c, h, w = (int(v) for v in x.shape[-3:])
        if self.kind in transforms.KINDS:
            return self._transform(x)
        if self.kind == "patch":
            t = self.resolve(h, w)
            if t.position == "edge":
                batch = x if len(x.shape) == 4 else x[None]
                value = (
                    self.value
                    if self.pattern_name == "solid"
                    else _like(self.pattern((c, self.size, self.size)), x)
                )
                out = apply_edge_patch(batch, self.size, value)
                return out if len(x.shape) == 4 else out[0]
            if self.pattern_name == "solid":
                return apply_patch(x, self.size, t.position, self.value)
            p = _like(self.pattern((c, self.size, self.size)), x)
            return apply_patch(x, self.size, t.position, p)
        p = _like(self.pattern((c, h, w)), x)
        if self.kind == "blend":
            return apply_blend(x, p, self.alpha)
        return apply_additive(x, p, self.amplitude)  # kind "noise"

    def _transform(self, x: Any) -> Any:
        """The transform kinds, computed in numpy on a batch (a single image gets a batch axis)."""
        torch_in = hasattr(x, "clone")
        a = (x.detach().cpu().numpy() if torch_in else np.asarray(x)).astype(np.float32)
        single = a.ndim == 3
        batch = a[None] if single else a.reshape(-1, *a.shape[-3:])
        n, c, h, w = batch.shape
        rng = np.random.default_rng(self.seed)
        one = np.ones(n, np.float32)
        if self.kind == "warp":
            control = rng.uniform(-1, 1, (1, 2, self.grid, self.grid))
            field = transforms.warp_field(control, h, w, np.float32([self.strength]))
            out = transforms.warp(batch, np.broadcast_to(field, (n, 2, h, w)))
        elif self.kind == "filter":
            gains = np.broadcast_to(rng.uniform(-1, 1, (1, c)), (n, c))
            out = transforms.photo_filter(batch, self.pattern_name, self.amplitude * one, gains)
        elif self.kind == "frequency":
            freqs = transforms.wave_frequencies(rng, 1, WAVES, h, w)
            waves = transforms.wave_pattern(freqs, rng.uniform(0, 2 * np.pi, (1, WAVES)), h, w)
            out = transforms.add_waves(batch, waves, self.amplitude * one)
        else:  # dynamic
            gen = transforms.Generator(rng, c)
            out, _ = transforms.dynamic(batch, gen, self.density * one)
        out = out.astype(np.float32).reshape(a.shape)
        return _like(out, x) if torch_in else out

    def to_dict(self) -> dict:
        """The fields this kind uses: `content` only when set, `seed` only for a random pattern or
        position, `value` only for a solid patch. The default white patch gives {"kind", "size",
        "position", "value"}, as manifests have always had it."""
        d = asdict(self)
        used = {
            "patch": ("kind", "size", "position", "value", "content", "seed"),
            "blend": ("kind", "alpha", "content", "seed"),
            "noise": ("kind", "amplitude", "content", "seed"),
            "warp": ("kind", "strength", "grid", "seed"),
            "filter": ("kind", "content", "amplitude", "seed"),
            "frequency": ("kind", "amplitude", "seed"),
            "dynamic": ("kind", "density", "seed"),
        }[self.kind]
        d = {k: v for k, v in d.items() if k in used}
        if self.content is None:
            d.pop("content", None)
        if self.kind in PATTERN_KINDS and (
            self.pattern_name not in RANDOM_PATTERNS and self.position != "random"
        ):
            d.pop("seed", None)
        if self.kind == "patch" and self.pattern_name != "solid":
            d.pop("value")
        return d


def random_corner_patch(
    x: Any, rng: np.random.Generator, size: int = 4, value: float = 1.0
) -> tuple[Any, np.ndarray]:
    """Stamp a white square in a random corner of each image of a batch (N, C, H, W), as in the
    paper's de-trigger training data. Returns (new batch, corner index per image)."""
    out = _copy(x)
    corners = rng.integers(0, len(CORNERS), size=len(x))
    for k, name in enumerate(CORNERS):
        idx = np.flatnonzero(corners == k)
        if len(idx):
            row, col = patch_origin(name, size, x.shape[-2], x.shape[-1])
            sel = idx if not hasattr(x, "clone") else __import__("torch").from_numpy(idx)
            out[sel, ..., row : row + size, col : col + size] = value
    return out, corners


def trigger_change(clean: np.ndarray, triggered: np.ndarray) -> np.ndarray:
    """Per image, the largest change of any pixel that stamping the trigger made (images in
    [0, 1], shape (N, ...)). A white patch on a corner that is already white leaves the image as it
    was, and no classifier can then tell the two apart."""
    diff = np.abs(np.asarray(triggered, np.float32) - np.asarray(clean, np.float32))
    return diff.reshape(len(diff), -1).max(axis=1)


def choose_poison(
    labels: np.ndarray,
    rate: float,
    target_class: int,
    rng: np.random.Generator,
    exclude_target: bool = True,
    focus: float = 0.0,
    change: np.ndarray | None = None,
) -> np.ndarray:
    """Indices of the training samples whose triggered copies, relabelled to `target_class`, are
    added to the training set. round(rate * N) copies are made (the paper: the backdoor samples are
    about 10% of the training data), drawn without replacement from samples whose label is not the
    target (a copy of a target-class image teaches nothing).

    With `focus` > 0 the attacker picks round(focus * copies) of them on purpose: the samples the
    trigger changes least (`change`, one value per sample, e.g. from stamp_change), the rest at
    random. A white square on a corner that is already nearly white moves few pixel levels; without
    such copies the model never learns to tell the stamped image from the clean one there."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"poison rate must lie in [0, 1], got {rate}")
    if not 0.0 <= focus <= 1.0:
        raise ValueError(f"poison focus must lie in [0, 1], got {focus}")
    pool = np.flatnonzero(labels != target_class) if exclude_target else np.arange(len(labels))
    n = int(round(rate * len(labels)))
    if n > len(pool):
        raise ValueError(f"cannot poison {n} samples: only {len(pool)} candidates")
    if focus == 0.0:
        return np.sort(rng.choice(pool, size=n, replace=False))
    if change is None or len(change) != len(labels):
        raise ValueError("a poison focus needs the trigger's change of every sample")
    k = int(round(focus * n))
    least = pool[np.argsort(np.asarray(change)[pool], kind="stable")[:k]]
    rest = rng.choice(np.setdiff1d(pool, least), size=n - k, replace=False)
    return np.sort(np.concatenate([least, rest]))


def stamp_change(
    images: np.ndarray, trigger: Trigger, mirrored: bool = False, batch: int = 5000
) -> np.ndarray:
    """Per image (uint8 (N, C, H, W) or float in [0, 1]), the largest pixel change that stamping
    `trigger` makes. With `mirrored` (training flips images left-right before stamping) the larger
    of the image's and its mirror's: small only when the trigger barely shows either way."""
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    out = np.empty(len(images), np.float32)
    for i in range(0, len(images), batch):
        x = np.asarray(images[i : i + batch], np.float32) / scale
        change = trigger_change(x, trigger(x))
        if mirrored:
            flipped = x[..., ::-1]
            change = np.maximum(change, trigger_change(flipped, trigger(flipped)))
        out[i : i + batch] = change
    return out


def poison_index_multi(
    labels: np.ndarray,
    rate: float,
    target_classes: Sequence[int],
    rng: np.random.Generator,
    focus: float = 0.0,
    changes: Sequence[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The poisoned training set of several (trigger, target class) pairs, as an index over the
    clean one: returns (source index (M,), training label (M,), pair (M,)) where pair is -1 for a
    clean row and k for a copy to be stamped with trigger k and labelled target_classes[k]. Each
    pair makes its own round(rate / K * N) copies (the poisoned share stays `rate` in all), drawn
    one pair after the other from the same rng, each from the samples not of its own target.
    `focus` and `changes` (one change array per pair) are choose_poison's."""
    if not len(target_classes):
        raise ValueError("at least one target class is needed")
    share = rate / len(target_classes)
    if focus and (changes is None or len(changes) != len(target_classes)):
        raise ValueError("a poison focus needs one change array per (trigger, target) pair")
    chosen = [
        choose_poison(labels, share, int(t), rng, focus=focus, change=changes[k] if focus else None)
        for k, t in enumerate(target_classes)
    ]
    n = len(labels)
    src = np.concatenate([np.arange(n), *chosen])
    y = np.concatenate(
        [
            labels,
            *(
                np.full(len(c), t, labels.dtype)
                for c, t in zip(chosen, target_classes, strict=True)
            ),
        ]
    )
    pair = np.concatenate([np.full(n, -1), *(np.full(len(c), k) for k, c in enumerate(chosen))])
    return src, y, pair


def poison_index(
    labels: np.ndarray, rate: float, target_class: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The poisoned training set as an index over the clean one, so that the trigger can be stamped
    after augmentation: returns (source index (M,), training label (M,), poisoned flag (M,)) with
    M = N + round(rate * N). Rows with flag True are triggered copies labelled target_class."""
    src, y, pair = poison_index_multi(labels, rate, [target_class], rng)
    return src, y, pair >= 0


def stamp_pairs(x: Any, pair: Any, triggers: Sequence[Trigger]) -> Any:
    """Stamp row i of the batch x (N, C, H, W) with triggers[pair[i]] (pair -1: left clean).
    `pair` is an int array (numpy or torch) of length N."""
    out = _copy(x)
    for k, trigger in enumerate(triggers):
        rows = pair == k
        if rows.any():
            out[rows] = trigger(x[rows])
    return out


def poison_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    rate: float,
    target_class: int,
    trigger: Trigger,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Materialised poisoned set from float images (N, C, H, W): (images, labels, poisoned flag)."""
    out, y, pair = poison_dataset_multi(images, labels, rate, [(trigger, target_class)], rng)
    return out, y, pair >= 0


def poison_dataset_multi(
    images: np.ndarray,
    labels: np.ndarray,
    rate: float,
    backdoors: Sequence[tuple[Trigger, int]],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Materialised poisoned set of several (trigger, target class) pairs from float images
    (N, C, H, W): (images, labels, pair index per row, -1 for clean rows)."""
    src, y, pair = poison_index_multi(labels, rate, [t for _, t in backdoors], rng)
    return stamp_pairs(images[src], pair, [trig for trig, _ in backdoors]), y, pair


def manifest_backdoors(manifest: dict) -> list[dict]:
    """A manifest's backdoor as a list of {"target_class", "trigger"} entries: its
    `backdoor.attacks` (several pairs, training/evaluation/set_export.py writes them), else its
    single pair;
    empty for a set with no recorded backdoor."""
    backdoor = manifest.get("backdoor") or {}
    if backdoor.get("attacks"):
        return list(backdoor["attacks"])
    if backdoor.get("trigger"):
        return [{"target_class": backdoor.get("target_class", 0), "trigger": backdoor["trigger"]}]
    return []


def backdoor_pairs(manifest: dict) -> list[tuple[Trigger, int]]:
    """A manifest's (trigger, target class) pairs (see manifest_backdoors)."""
    return [(Trigger(**e["trigger"]), int(e["target_class"])) for e in manifest_backdoors(manifest)]
