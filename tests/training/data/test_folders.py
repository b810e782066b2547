"""A user's images: an ImageFolder tree or a flat folder, converted and resized to the graph's
size; odd files skipped and counted, never a crash; a validation split held out."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support import user_models as um
from training.data.folders import FolderError, load_split, read_folder


def test_a_tree_with_broken_files_is_read_and_the_skipped_counted(tmp_path) -> None:
    x, y = um.make_images(12, (3, 40, 48), 0)
    um.write_pngs(tmp_path, x, y)
    broken = um.add_broken_files(tmp_path)
    images, summary = read_folder(tmp_path, (3, 40, 48))
    assert images.shape == (12, 3, 40, 48) and images.dtype == np.uint8
    assert summary.images == 12 and summary.n_skipped == broken
    assert summary.skipped == {"unreadable": 3, "not an image file": 1}
    assert "skipped 4 files" in summary.line()


def test_images_are_converted_and_resized_to_the_graph(tmp_path) -> None:
    x, _ = um.make_images(3, (3, 40, 48), 0)
    um.write_pngs(tmp_path, x)  # flat
    gray, _ = read_folder(tmp_path, (1, 20, 24))
    assert gray.shape == (3, 1, 20, 24)
    wide, _ = read_folder(tmp_path, (3, 96, 128))
    assert wide.shape == (3, 3, 96, 128)


def test_a_folder_without_images_is_refused(tmp_path) -> None:
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(FolderError, match="no readable images"):
        read_folder(tmp_path, (1, 8, 8))
    with pytest.raises(FolderError, match="no such folder"):
        read_folder(tmp_path / "missing", (1, 8, 8))


def test_the_validation_split_is_held_out(tmp_path) -> None:
    x, _ = um.make_images(200, (1, 12, 10), 0)
    um.write_pngs(tmp_path / "data", x)
    split = load_split(str(tmp_path / "data"), (1, 12, 10), val_fraction=0.5, seed=0)
    assert len(split.train) == len(split.val) == 100
    # disjoint: no training image is a validation image
    train = {a.tobytes() for a in split.train}
    assert not any(a.tobytes() in train for a in split.val)
    with pytest.raises(FolderError, match="--val-fraction"):
        load_split(str(tmp_path / "data"), (1, 12, 10), val_fraction=0.1)
    um.write_pngs(tmp_path / "val", x[:5])
    split = load_split(str(tmp_path / "data"), (1, 12, 10), val=str(tmp_path / "val"), min_val=5)
    assert (len(split.train), len(split.val)) == (200, 5)
    # A --val folder too small to calibrate on is refused before any training.
    with pytest.raises(FolderError, match="at least 6 images"):
        load_split(str(tmp_path / "data"), (1, 12, 10), val=str(tmp_path / "val"), min_val=6)
