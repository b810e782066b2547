"""Fixtures: tiny generated MNIST-style IDX files and CIFAR-10 binary batches in tmp dirs, and a
tiny MNIST preset to train on them (`tiny_preset`). No test touches the real datasets or the
network."""

from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from training import config, reproduce, swap_detrigger
from training.config import AEConfig, Preset, TargetConfig


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """IDX of unsigned bytes: magic 0x0000 08 <ndim>, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_idx_dataset(folder: Path, n_train: int = 30, n_test: int = 10, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
        arrays[prefix] = (images, labels)
    return arrays


def write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """images (N, 3, 32, 32) uint8 -> records of label byte + R, G, B planes."""
    rec = np.concatenate([labels[:, None].astype(np.uint8), images.reshape(len(images), -1)], 1)
    rec.tofile(path)


def make_cifar_dataset(folder: Path, per_batch: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        images = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch, dtype=np.uint8)
        write_cifar_batch(folder / name, images, labels)
        arrays[name] = (images, labels)
    return arrays


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors gain nothing from threads, and on a busy 2-core machine two OpenMP threads
    spin-wait on each other (a 1 s test became 80 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def idx_dir(tmp_path: Path) -> tuple[Path, dict]:
    return tmp_path / "mnist", make_idx_dataset(tmp_path / "mnist")


@pytest.fixture
def cifar_dir(tmp_path: Path) -> tuple[Path, dict]:
    return tmp_path / "cifar10", make_cifar_dataset(tmp_path / "cifar10")


@pytest.fixture
def idx_writer():
    """The IDX writer, for tests that build their own files."""
    return write_idx


@pytest.fixture
def no_standard_places(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Point the standard places at empty tmp folders, so a test never finds the real data."""
    from training.data import datasets

    empty = {k: [str(tmp_path / "nowhere" / k)] for k in datasets.SEARCH_PLACES}
    monkeypatch.setattr(datasets, "SEARCH_PLACES", empty)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def tiny_preset(monkeypatch, tmp_path):
    folder = tmp_path / "data" / "mnist"
    make_idx_dataset(folder, n_train=160, n_test=40)
    tiny = Preset(
        name="mnist",
        mean=[0.5],
        std=[0.25],
        target=TargetConfig(dataset="mnist", epochs=1, batch_size=32, val_size=40, threads=1),
        autoencoders={
            "mlp": AEConfig(arch="mlp", epochs=1, batch_size=32, threads=1),
            "conv": AEConfig(arch="conv", epochs=1, batch_size=32, width=4, threads=1),
        },
        target_fpr=0.04,  # not among calibration_fprs (0.01, 0.05): must be calibrated too
        strip_bank_size=12,  # of the 40 validation images; 28 left calibrate STRIP at 4% FPR
        strip_n=4,
        confidence=0.0,  # 40 validation images bound no FPR at a confidence: plain quantile
    )
    for module in (config, reproduce, swap_detrigger):
        monkeypatch.setattr(module, "PRESETS", {"mnist": tiny})
    return argparse.Namespace(
        data_dir=str(tmp_path / "data"),
        download=False,
        models_dir=str(tmp_path / "models"),
        reports_dir=str(tmp_path / "reports"),
        run_dir=str(tmp_path / "runs"),
    )
