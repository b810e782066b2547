"""Target classifiers. Every model takes float images (N, C, H, W) in [0, 1] and returns logits
(N, classes); normalisation happens inside (`Normalize`), so the exported graph needs none.

- `kwon_cnn`: Table 8 of the paper (MNIST, Fashion-MNIST).
- `vgg19`: Table 9 of the paper (CIFAR-10). Selectable, but far too slow for 2 CPU cores.
- `resnet_small`: the CIFAR-10 default, a narrow ResNet-9 / airbench-style net with BatchNorm that
  reaches >= 90% clean accuracy in about an hour on 2 CPU cores.
"""

from __future__ import annotations

import torch
from torch import nn

from training.data.datasets import to_float

TARGETS = ("kwon_cnn", "vgg19", "resnet_small")


class Normalize(nn.Module):
    """(x - mean) / std per channel; part of the graph so that callers feed [0, 1] pixels."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class KwonCNN(nn.Module):
    """Table 8: conv32-conv32-pool-conv64-conv64-pool-fc200-fc200-fc10 (3x3 'valid' convs, as in
    Keras' default), ReLU, dropout 0.5 before each FC layer (Table 10)."""

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, size: int = 28, dropout: float = 0.5
    ) -> None:
        super().__init__()

        def conv(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *conv(in_channels, 32),
            *conv(32, 32),
            nn.MaxPool2d(2),
            *conv(32, 64),
            *conv(64, 64),
            nn.MaxPool2d(2),
        )
        side = ((size - 4) // 2 - 4) // 2  # 28 -> 4
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(64 * side * side, 200),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(200, 200),
            nn.ReLU(inplace=True),
            nn.Linear(200, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class VGG19(nn.Module):
    """Table 9: VGG-19 convolutions (3x3 'same', ReLU), five max-pools, fc4096-fc4096-fc10."""

    CFG = (
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    )

    def __init__(
        self, in_channels: int = 3, num_classes: int = 10, size: int = 32, dropout: float = 0.5
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        side = size // 32
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(512 * side * side, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def conv_bn(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.GELU())


class ConvGroup(nn.Module):
    """conv -> pool -> BN -> act -> conv -> BN -> act, plus a residual around the second conv."""

    def __init__(self, i: int, o: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(i, o, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.bn1 = nn.BatchNorm2d(o)
        self.conv2 = conv_bn(o, o)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.pool(self.conv1(x))))
        return x + self.conv2(x)


class ResNetSmall(nn.Module):
    """Narrow ResNet-9 / airbench-style net: stem conv, three conv groups (each halving the side),
    global max pool, linear. widths = (stem, group1, group2, group3)."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        widths: tuple[int, int, int, int] = (32, 64, 128, 256),
    ) -> None:
        super().__init__()
        w0, w1, w2, w3 = widths
        self.net = nn.Sequential(
            conv_bn(in_channels, w0),
            ConvGroup(w0, w1),  # 32 -> 16
            ConvGroup(w1, w2),  # 16 -> 8
            ConvGroup(w2, w3),  # 8 -> 4
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(w3, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The 1/8 scale keeps initial logits small (airbench's trick); it is part of the model.
        return self.head(self.net(x)) / 8.0


def build_target(
    arch: str,
    in_channels: int,
    num_classes: int,
    size: int,
    mean: list[float],
    std: list[float],
    widths: tuple[int, int, int, int] | None = None,
) -> nn.Sequential:
    """Normalize + the named classifier. The result maps [0, 1] images to logits."""
    if arch == "kwon_cnn":
        net: nn.Module = KwonCNN(in_channels, num_classes, size)
    elif arch == "vgg19":
        net = VGG19(in_channels, num_classes, size)
    elif arch == "resnet_small":
        net = ResNetSmall(in_channels, num_classes, widths or (32, 64, 128, 256))
    else:
        raise ValueError(f"unknown target architecture {arch!r}; allowed: {', '.join(TARGETS)}")
    return nn.Sequential(Normalize(mean, std), net)


@torch.no_grad()
def predict(
    model: nn.Module, images: torch.Tensor, batch_size: int = 1000, transform=None
) -> torch.Tensor:
    """Logits (N, classes) for float images (N, C, H, W) in [0, 1] (or uint8, converted)."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size]
        x = to_float(x) if x.dtype == torch.uint8 else x
        if transform is not None:
            x = transform(x)
        out.append(model(x.contiguous(memory_format=torch.channels_last)))
    return torch.cat(out)
