"""User-like ONNX classifiers and image folders for the `detrigger-guard fit` tests, made in the
test session in seconds.

Images (N, C, H, W) of any size: dim noise plus one bright blob whose cell of a 2x4 grid is the
class (8 classes). The backdoor: a 4x4 white square at the top-left (the paper's trigger),
relabelled to TARGET on 10% extra copies. Graphs come in the shapes users export: normalisation
inside, NHWC uint8 input, a fixed batch, two outputs, probabilities out.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from training.data.triggers import Trigger, poison_dataset

CLASSES, TARGET = 8, 3
TRIGGER = Trigger(kind="patch", size=4, position="top-left", value=1.0)


def make_images(n: int, chw: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Float images (n, C, H, W) in [0, 1] and their labels (n,). The blob keeps off the
    top-left corner, where the trigger goes."""
    c, h, w = chw
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = rng.uniform(0.0, 0.25, (n, c, h, w)).astype(np.float32)
    ch, cw = h // 2, w // 4
    bh, bw = max(2, ch // 2), max(2, cw // 2)
    for i, k in enumerate(y):
        r, col = divmod(int(k), 4)
        r0 = r * ch + (ch - bh) // 2 + int(rng.integers(0, 2))
        c0 = col * cw + (cw - bw) // 2 + int(rng.integers(0, 2))
        x[i, :, r0 : r0 + bh, c0 : c0 + bw] = rng.uniform(0.6, 1.0, (c, 1, 1))
    return x, y.astype(np.int64)


class Net(nn.Module):
    """A small conv classifier on (N, C, H, W) floats in [0, 1]."""

    def __init__(self, chw: tuple[int, int, int]):
        super().__init__()
        c, h, w = chw
        self.features = nn.Sequential(
            nn.Conv2d(c, 12, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(12, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Linear(16 * (h // 4) * (w // 4), CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_backdoored(
    chw: tuple[int, int, int], n: int = 1500, epochs: int = 4, trigger: Trigger = TRIGGER
) -> Net:
    torch.manual_seed(0)
    x, y = make_images(n, chw, 0)
    x, y, _ = poison_dataset(x, y, 0.1, TARGET, trigger, np.random.default_rng(0))
    net = Net(chw)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(perm), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(net(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


class Normalised(nn.Module):
    """Takes [0, 1] NCHW; normalises inside the graph (as torchvision models are exported)."""

    def __init__(self, net: nn.Module, mean: float, std: float):
        super().__init__()
        self.net, self.mean, self.std = net, mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std * self.std + self.mean)


class NhwcUint8(nn.Module):
    """Takes uint8 NHWC 0..255."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 3, 1, 2).float() / 255.0)


class Expects(nn.Module):
    """Takes float NCHW already normalised with (mean, std): the user must pass --mean/--std."""

    def __init__(self, net: nn.Module, mean: float, std: float):
        super().__init__()
        self.net, self.mean, self.std = net, mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * self.std + self.mean)


class TwoOutputs(nn.Module):
    def __init__(self, net: Net):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.net.features(x)
        return feats, self.net.head(feats)


class Probabilities(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


class ConstantBatch(nn.Module):
    """Reshapes with the batch written in: cannot serve another batch."""

    def __init__(self, net: Net):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.head(self.net.features[:-1](x).reshape(1, -1))


def export(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    outputs: tuple[str, ...] = ("scores",),
    dynamic: bool = True,
    input_name: str = "input",
) -> Path:
    axes = {input_name: {0: "n"}, **{o: {0: "n"} for o in outputs}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=[input_name],
            output_names=list(outputs),
            dynamic_axes=axes,
        )
    return path


def write_pngs(folder: Path, x: np.ndarray, y: np.ndarray | None = None) -> None:
    """Images (N, C, H, W) in [0, 1] as PNGs: folder/<label>/i.png, or flat without labels."""
    for i, img in enumerate(x):
        a = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
        a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
        d = folder / str(int(y[i])) if y is not None else folder
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(d / f"{i:05d}.png")


def add_broken_files(folder: Path) -> int:
    """A few files a real folder has: a truncated PNG, a text file named .jpg, an empty .png,
    a notes file, a hidden file. Returns how many of them the reader must skip and count."""
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (folder / "not-really.jpg").write_text("hello")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("labels are in the sub-folders")
    (folder / ".DS_Store").write_bytes(b"\x00\x01")  # hidden: ignored, not counted
    return 4
