from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from training.data import datasets
from training.data.datasets import DatasetError, load_dataset, read_cifar_batch, read_idx

pytestmark = pytest.mark.usefixtures("no_standard_places")


def test_idx_loader_reads_generated_files(idx_dir):
    folder, arrays = idx_dir
    train = load_dataset("mnist", "train", folder.parent)  # found in data-dir/mnist
    images, labels = arrays["train"]
    assert train.images.shape == (30, 1, 28, 28) and train.images.dtype == np.uint8
    np.testing.assert_array_equal(train.images[:, 0], images)
    np.testing.assert_array_equal(train.labels, labels)
    test = load_dataset("fashion-mnist", "test", folder)
    np.testing.assert_array_equal(test.labels, arrays["t10k"][1])
    assert test.classes[0] == "T-shirt/top"


def test_read_idx_uncompressed(tmp_path, idx_writer):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    idx_writer(tmp_path / "x.idx", a, compress=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.idx"), a)


def test_cifar_loader_reads_generated_batches(cifar_dir):
    folder, arrays = cifar_dir
    train = load_dataset("cifar10", "train", folder)
    assert train.images.shape == (20, 3, 32, 32)
    np.testing.assert_array_equal(train.images[:4], arrays["data_batch_1.bin"][0])
    np.testing.assert_array_equal(train.images[-4:], arrays["data_batch_5.bin"][0])
    np.testing.assert_array_equal(train.labels[4:8], arrays["data_batch_2.bin"][1])
    test = load_dataset("cifar10", "test", folder)
    np.testing.assert_array_equal(test.images, arrays["test_batch.bin"][0])
    assert train.classes[3] == "cat"


def test_cifar_plane_order_is_rgb(tmp_path):
    # One red image: the R plane comes first in each record.
    img = np.zeros((1, 3, 32, 32), np.uint8)
    img[0, 0] = 255
    rec = np.concatenate([[7], img.reshape(-1)]).astype(np.uint8)
    rec.tofile(tmp_path / "b.bin")
    images, labels = read_cifar_batch(tmp_path / "b.bin")
    assert labels.tolist() == [7]
    assert images[0, 0].min() == 255 and images[0, 1:].max() == 0


def test_missing_file_error_names_file_places_and_remedy(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_dataset("fashion-mnist", "train", tmp_path / "mine")
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg
    assert str(tmp_path / "mine") in msg and str(tmp_path / "nowhere" / "fashion-mnist") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--download" in msg


def test_missing_cifar_batch_is_named(cifar_dir):
    folder, _ = cifar_dir
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(DatasetError, match=r"data_batch_3\.bin.*(\n.*)*--download"):
        load_dataset("cifar10", "train", folder)


def test_truncated_idx_is_reported(idx_dir):
    folder, _ = idx_dir
    path = folder / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DatasetError) as e:
        load_dataset("mnist", "train", folder)
    assert str(path) in str(e.value) and "--download" in str(e.value)


def test_corrupt_gzip_and_bad_magic_are_reported(tmp_path):
    bad = tmp_path / "bad.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match="bad.gz"):
        read_idx(bad)
    magic = tmp_path / "magic.idx"
    magic.write_bytes(bytes([0, 0, 0x0D, 1, 0, 0, 0, 1, 0]))  # float IDX, not bytes
    with pytest.raises(DatasetError, match="magic"):
        read_idx(magic)


def test_corrupt_cifar_batch_is_reported(cifar_dir):
    folder, _ = cifar_dir
    (folder / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DatasetError, match=r"test_batch\.bin.*3073"):
        load_dataset("cifar10", "test", folder)


def test_image_folder_loader(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                a = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
                Image.fromarray(a).save(tmp_path / split / cls / f"{i}.png")
    (tmp_path / "train" / "dog" / "notes.txt").write_text("ignored")
    ds = load_dataset("folder", "train", tmp_path)
    assert ds.classes == ["cat", "dog"]
    assert ds.images.shape == (6, 3, 8, 10)
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    first = np.asarray(Image.open(tmp_path / "train" / "cat" / "0.png"))
    np.testing.assert_array_equal(ds.images[0], first.transpose(2, 0, 1))


def test_image_folder_grayscale_and_resize(tmp_path):
    from PIL import Image

    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((6, 6), 9, np.uint8)).save(tmp_path / "a" / "x.png")
    Image.fromarray(np.full((4, 4), 200, np.uint8)).save(tmp_path / "a" / "y.png")
    ds = datasets.load_image_folder(tmp_path)
    assert ds.images.shape == (2, 1, 6, 6)
    assert ds.images[1].min() == 200


def test_missing_image_folder(tmp_path):
    with pytest.raises(DatasetError, match="one sub-folder per class"):
        datasets.load_image_folder(tmp_path / "absent")


def test_unknown_names_list_what_is_allowed():
    with pytest.raises(ValueError, match="mnist, fashion-mnist, cifar10, folder"):
        load_dataset("svhn", "train")
    with pytest.raises(ValueError, match="train, test"):
        load_dataset("mnist", "val")


def test_search_order_prefers_data_dir(tmp_path: Path):
    dirs = datasets.search_dirs("cifar10", tmp_path)
    assert dirs[0] == tmp_path and dirs[1] == tmp_path / "cifar10"
