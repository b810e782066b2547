"""A user's images, without labels, as uint8 (N, C, H, W) arrays of a graph's size.

A source is a folder (an ImageFolder tree root/<class>/<image>, or a flat folder; every image
file under it is read, at any depth, labels ignored) or a preset name (mnist, fashion-mnist,
cifar10: its training split, found as training/data/datasets.py finds it). Images are converted
to grayscale or RGB by the graph's channels and resized (bilinear) to its H x W. A file that is
not an image, cannot be read, or is empty is skipped and counted, never a crash.

A validation split is held out of training: the images of `val` (another source) or a seeded
share `val_fraction` of the source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.data.datasets import IMAGE_SUFFIXES, load_dataset, split_train_val

PRESETS = ("mnist", "fashion-mnist", "cifar10")


class FolderError(ValueError):
    """No usable images; the message says where it looked and what it found."""


@dataclass
class ReadSummary:
    """What reading a source found: images read, files skipped and why."""

    source: str
    images: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    examples: dict[str, str] = field(default_factory=dict)  # reason -> one file

    def skip(self, reason: str, path: Path) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.examples.setdefault(reason, str(path))

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def line(self) -> str:
        s = f"{self.source}: {self.images} images"
        if self.skipped:
            why = ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items()))
            s += f"; skipped {self.n_skipped} files ({why})"
        return s


def to_chw(image, chw: tuple[int, int, int]) -> np.ndarray:
    """One PIL image -> uint8 (C, H, W) of the graph's channels and size."""
    from PIL import Image

    c, h, w = chw
    im = image.convert("L" if c == 1 else "RGB")
    if (im.height, im.width) != (h, w):
        im = im.resize((w, h), Image.Resampling.BILINEAR)
    a = np.asarray(im, np.uint8)
    return a[None] if c == 1 else a.transpose(2, 0, 1)


def image_files(root: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) under root, sorted; hidden files and folders left out."""
    images: list[Path] = []
    other: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            (images if p.suffix.lower() in IMAGE_SUFFIXES else other).append(p)
    return images, other


def read_folder(root: Path, chw: tuple[int, int, int]) -> tuple[np.ndarray, ReadSummary]:
    """Every readable image under root as uint8 (N, C, H, W)."""
    from PIL import Image

    if not root.is_dir():
        raise FolderError(
            f"{root}: no such folder; give a folder of images (flat or one sub-folder per "
            f"class) or a preset name ({', '.join(PRESETS)})"
        )
    summary = ReadSummary(str(root))
    files, other = image_files(root)
    for p in other:
        summary.skip("not an image file", p)
    arrays = []
    for p in files:
        try:
            with Image.open(p) as im:
                im.load()
                if im.width < 1 or im.height < 1:
                    raise ValueError("empty image")
                arrays.append(to_chw(im, chw))
        except Exception:  # PIL raises many kinds (UnidentifiedImageError, OSError, ...)
            summary.skip("unreadable", p)
    summary.images = len(arrays)
    if not arrays:
        raise FolderError(f"{summary.line()}: no readable images ({', '.join(IMAGE_SUFFIXES)})")
    return np.stack(arrays), summary


def read_preset(name: str, chw: tuple[int, int, int], data_dir: str | None):
    """A preset's training split, converted to the graph's channels and size."""
    from PIL import Image

    images = load_dataset(name, "train", data_dir).images  # (N, C0, H0, W0) uint8
    summary = ReadSummary(f"{name} (training split)", images=len(images))
    if images.shape[1:] == chw:
        return images, summary
    out = np.empty((len(images), *chw), np.uint8)
    for i, a in enumerate(images):
        im = Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))
        out[i] = to_chw(im, chw)
    return out, summary


def read_source(
    source: str, chw: tuple[int, int, int], data_dir: str | None = None
) -> tuple[np.ndarray, ReadSummary]:
    if source in PRESETS and not Path(source).is_dir():
        return read_preset(source, chw, data_dir)
    return read_folder(Path(source), chw)


@dataclass
class Split:
    train: np.ndarray  # uint8 (N, C, H, W)
    val: np.ndarray
    summaries: list[ReadSummary]
    val_source: str  # what the validation images are

    def lines(self) -> list[str]:
        return [s.line() for s in self.summaries] + [
            f"{len(self.train)} training images, {len(self.val)} validation images "
            f"({self.val_source})"
        ]


def load_split(
    source: str,
    chw: tuple[int, int, int],
    val: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    data_dir: str | None = None,
    min_val: int = 100,
) -> Split:
    """The training images and the held-out validation images of a source."""
    images, summary = read_source(source, chw, data_dir)
    if val:
        val_images, val_summary = read_source(val, chw, data_dir)
        if len(val_images) < min_val:  # said before any training, not after it
            raise FolderError(
                f"{val_summary.line()}: calibration needs at least {min_val} images: give a "
                "larger --val folder"
            )
        return Split(images, val_images, [summary, val_summary], f"from {val}")
    if not 0.0 < val_fraction < 1.0:
        raise FolderError(f"--val-fraction {val_fraction} must lie in (0, 1)")
    n_val = int(round(len(images) * val_fraction))
    if n_val < min_val or len(images) - n_val < 1:
        raise FolderError(
            f"{summary.line()}: a validation share of {val_fraction} gives {n_val} images; "
            f"calibration needs at least {min_val}: give more images, a larger --val-fraction "
            "or a --val folder"
        )
    tr, va = split_train_val(len(images), n_val, seed)
    return Split(
        images[tr], images[va], [summary], f"{val_fraction:g} of {source} held out, seed {seed}"
    )
