"""Write a model set atomically: everything goes into a staging folder beside the output, which
is checked and then renamed into place, so that a partial run never leaves a set that loads."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def staging_dir(out: Path) -> Path:
    """An empty folder beside `out` on the same file system (so the rename is atomic); a
    leftover of a killed run is removed first. Its name starts with a dot: no set loads it."""
    tmp = out.parent / f".{out.name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def refuse_existing(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to replace it, or another --out")


def publish(tmp: Path, out: Path, check: Callable[[Path], object]) -> None:
    """Check the staged set, then put it at `out` (an old set there is moved aside first and
    removed once the new one is in place)."""
    check(tmp)
    old = out.parent / f".{out.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old)
