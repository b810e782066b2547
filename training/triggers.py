"""Backdoor triggers and data poisoning, as pure functions.

Images are float arrays in [0, 1] laid out (..., C, H, W): one image (C, H, W) or a batch
(N, C, H, W). Every function works on numpy arrays and torch tensors alike (only slicing and
arithmetic) and returns a new array; the input is never changed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

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


def apply_blend(x: Any, pattern: Any, alpha: float = 0.1) -> Any:
    """Blended trigger (Chen et al.): (1 - alpha) * x + alpha * pattern, pattern broadcastable to x
    (e.g. (C, H, W) or (H, W) noise in [0, 1])."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    return (1.0 - alpha) * x + alpha * pattern


@dataclass(frozen=True)
class Trigger:
    """What the manifest records as backdoor.trigger."""

    kind: str = "patch"  # "patch" or "blend"
    size: int = 4
    position: str = "top-left"
    value: float = 1.0
    alpha: float = 0.1  # blend only
    seed: int = 0  # blend only: the noise pattern's seed

    def pattern(self, shape: tuple[int, ...]) -> np.ndarray:
        """The blend noise pattern for images of shape (C, H, W), fixed by `seed`."""
        return np.random.default_rng(self.seed).random(shape, dtype=np.float32)

    def __call__(self, x: Any) -> Any:
        if self.kind == "patch":
            return apply_patch(x, self.size, self.position, self.value)
        if self.kind == "blend":
            p = self.pattern(tuple(x.shape[-3:]))
            if hasattr(x, "clone"):  # torch tensor
                import torch

                p = torch.from_numpy(p).to(x.dtype)
            return apply_blend(x, p, self.alpha)
        raise ValueError(f"unknown trigger kind {self.kind!r}; allowed: patch, blend")

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.kind == "patch":
            d.pop("alpha"), d.pop("seed")
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


def choose_poison(
    labels: np.ndarray,
    rate: float,
    target_class: int,
    rng: np.random.Generator,
    exclude_target: bool = True,
) -> np.ndarray:
    """Indices of the training samples whose triggered copies, relabelled to `target_class`, are
    added to the training set. round(rate * N) copies are made (the paper: the backdoor samples are
    about 10% of the training data), drawn without replacement from samples whose label is not the
    target (a copy of a target-class image teaches nothing)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"poison rate must lie in [0, 1], got {rate}")
    pool = np.flatnonzero(labels != target_class) if exclude_target else np.arange(len(labels))
    n = int(round(rate * len(labels)))
    if n > len(pool):
        raise ValueError(f"cannot poison {n} samples: only {len(pool)} candidates")
    return np.sort(rng.choice(pool, size=n, replace=False))


def poison_index(
    labels: np.ndarray, rate: float, target_class: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The poisoned training set as an index over the clean one, so that the trigger can be stamped
    after augmentation: returns (source index (M,), training label (M,), poisoned flag (M,)) with
    M = N + round(rate * N). Rows with flag True are triggered copies labelled target_class."""
    chosen = choose_poison(labels, rate, target_class, rng)
    n = len(labels)
    src = np.concatenate([np.arange(n), chosen])
    y = np.concatenate([labels, np.full(len(chosen), target_class, labels.dtype)])
    flag = np.concatenate([np.zeros(n, bool), np.ones(len(chosen), bool)])
    return src, y, flag


def poison_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    rate: float,
    target_class: int,
    trigger: Trigger,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Materialised poisoned set from float images (N, C, H, W): (images, labels, poisoned flag)."""
    src, y, flag = poison_index(labels, rate, target_class, rng)
    out = images[src]
    out[flag] = trigger(out[flag])
    return out, y, flag
