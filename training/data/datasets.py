"""Dataset loaders: MNIST and Fashion-MNIST (IDX gzip), CIFAR-10 (binary batches) and a user's own
image folder (one sub-folder per class).

Every loader returns a `Dataset` of uint8 images shaped (N, C, H, W) and int64 labels (N,).
Files are looked for in `--data-dir` first, then in the standard places listed in
`SEARCH_PLACES`. Downloading happens only when asked for (`download=True`).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATASETS = ("mnist", "fashion-mnist", "cifar10", "folder")

# Official sources. MNIST and Fashion-MNIST: md5 of each .gz; CIFAR-10: md5 of the binary tarball.
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
FASHION_FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
}
CIFAR_TAR_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = "test_batch.bin"
CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte + R, G, B planes

CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
    "cifar10": [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ],
}

# Standard places, looked at after --data-dir (in this order). `{home}` is the user's home.
SEARCH_PLACES = {
    "mnist": ["data/mnist", "/work/shared/data/mnist", "{home}/.cache/detrigger-guard/mnist"],
    "fashion-mnist": [
        "data/fashion-mnist",
        "/usr/share/datasets/fashion-mnist",
        "{home}/.cache/detrigger-guard/fashion-mnist",
    ],
    "cifar10": [
        "data/cifar10",
        "data/cifar10/cifar-10-batches-bin",
        "/work/shared/data/cifar10",
        "{home}/.cache/detrigger-guard/cifar10",
    ],
}
HOW_TO_GET = {
    "mnist": "run with --download (fetches the official files into --data-dir, md5-checked)",
    "fashion-mnist": (
        "run `apt-get install dataset-fashion-mnist` (installs /usr/share/datasets/fashion-mnist) "
        "or run with --download"
    ),
    "cifar10": "run with --download (fetches cifar-10-binary.tar.gz into --data-dir, md5-checked)",
}


class DatasetError(RuntimeError):
    """A dataset file is missing or corrupt. The message names the file, where it was looked for
    and how to get it."""


@dataclass
class Dataset:
    images: np.ndarray  # (N, C, H, W) uint8
    labels: np.ndarray  # (N,) int64
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


# ---------------------------------------------------------------------------------------------
# Pure readers


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) of unsigned bytes into an array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # bad gzip stream, truncated file
        raise DatasetError(f"{path}: cannot read ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DatasetError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(raw) - offset != expected:
        raise DatasetError(
            f"{path}: IDX header says {shape} = {expected} bytes but the file holds "
            f"{len(raw) - offset}"
        )
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(shape)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 binary batch -> images (N, 3, 32, 32) uint8 RGB, labels (N,) int64."""
    raw = np.fromfile(path, np.uint8)
    if raw.size == 0 or raw.size % CIFAR_RECORD:
        raise DatasetError(
            f"{path}: {raw.size} bytes is not a whole number of {CIFAR_RECORD}-byte CIFAR records"
        )
    rec = raw.reshape(-1, CIFAR_RECORD)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DatasetError(f"{path}: label {labels.max()} out of range 0-9")
    return rec[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


# ---------------------------------------------------------------------------------------------
# Finding files


def search_dirs(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    """Where `name`'s files are looked for, in order: --data-dir (and data-dir/name), then the
    standard places."""
    dirs: list[Path] = []
    if data_dir is not None:
        dirs += [Path(data_dir), Path(data_dir) / name]
        if name == "cifar10":
            dirs.append(Path(data_dir) / "cifar-10-batches-bin")
    home = str(Path.home())
    dirs += [Path(p.format(home=home)) for p in SEARCH_PLACES[name]]
    return dirs


def find_dir(name: str, files: list[str], data_dir: str | os.PathLike | None) -> Path:
    """The first searched folder that holds every one of `files`; else a DatasetError naming the
    first missing file, every place looked and how to get it."""
    dirs = search_dirs(name, data_dir)
    for d in dirs:
        if all((d / f).is_file() for f in files):
            return d
    missing = files[0]
    for f in files:
        if not any((d / f).is_file() for d in dirs):
            missing = f
            break
    looked = "\n".join(f"  - {d}" for d in dirs)
    raise DatasetError(
        f"{name}: file {missing!r} not found. Looked in:\n{looked}\nTo get it: {HOW_TO_GET[name]}."
    )


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(name: str, data_dir: str | os.PathLike) -> Path:
    """Fetch `name` from its official source into data_dir/name and check md5s. Network use only
    happens here, and only when --download is given."""
    dest = Path(data_dir) / name
    dest.mkdir(parents=True, exist_ok=True)
    if name in ("mnist", "fashion-mnist"):
        table = MNIST_FILES if name == "mnist" else FASHION_FILES
        for fname, md5 in table.items():
            target = dest / fname
            if not target.is_file():
                urllib.request.urlretrieve(URLS[name] + fname, target)
            if _md5(target) != md5:
                raise DatasetError(f"{target}: md5 {_md5(target)} != official {md5}")
    elif name == "cifar10":
        tar_path = dest / "cifar-10-binary.tar.gz"
        if not tar_path.is_file():
            urllib.request.urlretrieve(URLS[name], tar_path)
        if _md5(tar_path) != CIFAR_TAR_MD5:
            raise DatasetError(f"{tar_path}: md5 {_md5(tar_path)} != official {CIFAR_TAR_MD5}")
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                base = Path(member.name).name
                if member.isfile() and (base.endswith(".bin") or base == "batches.meta.txt"):
                    member.name = base  # flatten cifar-10-batches-bin/ into dest
                    tar.extract(member, dest, filter="data")
    else:
        raise ValueError(f"no download for {name!r}; allowed: mnist, fashion-mnist, cifar10")
    return dest


# ---------------------------------------------------------------------------------------------
# Loaders


def _load_idx_pair(d: Path, images_file: str, labels_file: str, name: str) -> tuple:
    images = read_idx(d / images_file)
    labels = read_idx(d / labels_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(
            f"{d / images_file}: shape {images.shape} does not match labels {labels.shape} "
            f"in {d / labels_file}. To get a good copy: {HOW_TO_GET[name]}."
        )
    return images[:, None].copy(), labels.astype(np.int64)  # (N, 1, H, W)


def load_idx_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """MNIST or Fashion-MNIST, split 'train' or 'test'."""
    prefix = {"train": "train", "test": "t10k"}[split]
    files = [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"]
    d = find_dir(name, files, data_dir)
    try:
        images, labels = _load_idx_pair(d, files[0], files[1], name)
    except DatasetError as e:
        raise DatasetError(f"{e}\nTo get a good copy: {HOW_TO_GET[name]}.") from e
    return Dataset(images, labels, CLASS_NAMES[name])


def load_cifar10(split: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    files = list(CIFAR_TRAIN) if split == "train" else [CIFAR_TEST]
    d = find_dir("cifar10", files, data_dir)
    parts = []
    for f in files:
        try:
            parts.append(read_cifar_batch(d / f))
        except DatasetError as e:
            raise DatasetError(f"{e}\nTo get a good copy: {HOW_TO_GET['cifar10']}.") from e
    classes = CLASS_NAMES["cifar10"]
    meta = d / "batches.meta.txt"
    if meta.is_file():
        names = [s.strip() for s in meta.read_text().splitlines() if s.strip()]
        if len(names) == 10:
            classes = names
    return Dataset(
        np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), classes
    )


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def load_image_folder(
    root: str | os.PathLike, size: tuple[int, int] | None = None, channels: int | None = None
) -> Dataset:
    """A user's own data: root/<class>/<image>. Classes are the sorted sub-folder names. All images
    are converted to `channels` (1 or 3; default: 3 unless every image is grayscale) and resized to
    `size` (H, W; default: the first image's size)."""
    from PIL import Image  # only this loader needs Pillow

    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"image folder {root} not found. Give --data-dir a folder with one sub-folder per "
            "class, each holding images."
        )
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    paths = [
        (p, i)
        for i, c in enumerate(classes)
        for p in sorted((root / c).iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not paths:
        raise DatasetError(
            f"image folder {root}: no images ({', '.join(IMAGE_SUFFIXES)}) in any class sub-folder"
        )
    pil = [Image.open(p) for p, _ in paths]
    if channels is None:
        channels = 1 if all(im.mode in ("L", "1", "I;16") for im in pil) else 3
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if size is None:
        size = (pil[0].height, pil[0].width)
    arrays = []
    for im in pil:
        im = im.convert("L" if channels == 1 else "RGB")
        if (im.height, im.width) != tuple(size):
            im = im.resize((size[1], size[0]), Image.BILINEAR)
        a = np.asarray(im, np.uint8)
        arrays.append(a[None] if channels == 1 else a.transpose(2, 0, 1))
    return Dataset(np.stack(arrays), np.array([i for _, i in paths], np.int64), classes)


def load_dataset(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    download_missing: bool = False,
) -> Dataset:
    """Load `name` ('mnist', 'fashion-mnist', 'cifar10' or 'folder') split 'train' or 'test'.
    For 'folder', data_dir is the root holding train/ and test/ sub-folders."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; allowed: train, test")
    if name == "folder":
        if data_dir is None:
            raise ValueError("dataset 'folder' needs --data-dir (a folder with train/ and test/)")
        return load_image_folder(Path(data_dir) / split)
    if download_missing:
        if data_dir is None:
            raise ValueError("--download needs --data-dir (where to put the files)")
        try:
            return load_dataset(name, split, data_dir)
        except DatasetError:
            download(name, data_dir)
    if name == "cifar10":
        return load_cifar10(split, data_dir)
    return load_idx_dataset(name, split, data_dir)


def split_train_val(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (train, val) index arrays over n training images, fixed by seed."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images (N, C, H, W), an array or a tensor -> float tensor in [0, 1]."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    return images.float().div_(255.0)
