"""De-trigger autoencoders. Both map images (N, C, H, W) in [0, 1] to images of the same shape,
clamped to [0, 1].

- `mlp`: the paper's (Section IV-C): flattened pixels -> 250 -> 100 -> 20 -> 100 -> 250 -> pixels,
  ReLU, sigmoid output.
- `conv`: ours. A small U-Net that predicts a per-pixel mask m in [0, 1] and a fill r, and outputs
  (1 - m) * x + m * r: where m is 0 the pixel passes through unchanged, so a clean image keeps its
  detail and the target's decision on it does not move. The MLP, by contrast, re-draws (blurs) every
  image, which is what makes its class-change rule fire on clean images.
  Trained with the L2 loss plus a per-pixel BCE on the mask against the pixels the training trigger
  changed: with the L2 loss alone the mask collapses to 0 everywhere (the ~1% trigger pixels lose
  to the ~99% clean ones and the sigmoid saturates), and the AE stays the identity.
  The fill is a sigmoid (`fill="sigmoid"`, the first AEs) or a sigmoid stretched to
  (-0.05, 1.05) (`"extended"`, clipped to [0, 1] with the output). A plain sigmoid never reaches
  0 or 1: on MNIST's black background it stayed near 0.02-0.05 where the mask opened, and a
  faint uniform lift of the background is itself enough to fire a noise backdoor, so the
  "de-triggered" image kept the backdoor. A linear fill reached black but, two epochs in, copied
  the input through the U-Net's skip under an open mask (a white square came back white).
  With `residual` r > 0 the AE also predicts a bounded correction d = r * tanh(.) and outputs
  (1 - m) * (x + d) + m * fill: the mask and fill replace local patches (inpainting, the fill
  need not resemble the input), the correction undoes full-image perturbations (blends,
  additive noise: the output is the input minus a small change). One fill for both learnt to
  copy its input (the right answer for a faint full-image trigger) and then copied white
  squares back too.
- `slim`: the same mask, fill and correction, computed by a cheaper net (issue 20: the conv AE
  cost 3.5 times the MNIST target it guards). The image is folded into 2 x 2 blocks
  (space-to-depth: (C, H, W) -> (4C, H/2, W/2)), a one-level U-Net runs at H/2 and H/4, and the
  head's 4 x (1 + 2C) channels are unfolded back (depth-to-space), so that the mask is still
  per pixel. No convolution runs at full resolution: on MNIST the net is about 7 times fewer
  multiply-adds than the conv AE's at the same width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

AUTOENCODERS = ("mlp", "conv", "slim", "slim-fr")
FILLS = ("sigmoid", "extended")  # the conv AE's fill activation
EXTEND = 0.05  # "extended": the fill's range is (-EXTEND, 1 + EXTEND)


class MLPAutoencoder(nn.Module):
    def __init__(
        self, in_channels: int, size: int, hidden: tuple[int, ...] = (250, 100, 20, 100, 250)
    ) -> None:
        super().__init__()
        self.shape = (in_channels, size, size)
        d = in_channels * size * size
        dims = [d, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        layers += [nn.Linear(dims[-1], d), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, C, H, W) -> (N, C*H*W) -> (N, C, H, W); -1 keeps the batch axis dynamic in ONNX.
        return self.net(x).reshape(-1, *self.shape)


def _block(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(i, o, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(o, o, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class MaskedAutoencoder(nn.Module):
    """What the masked AEs share: the output (1 - m) * (x + d) + m * fill from a net's head
    channels (mask logit, C fill, C correction); subclasses give `head_parts` and `channels`."""

    fill: str
    residual: float
    channels: int

    def head_parts(self, x: torch.Tensor) -> torch.Tensor:
        """The head's raw output (N, 1 + C (+ C with a residual), H, W) for images x."""
        raise NotImplementedError

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mask logit (N, 1, H, W), fill (N, C, H, W): in (0, 1) for the sigmoid fill, in
        (-EXTEND, 1 + EXTEND) for the extended one, correction d (N, C, H, W) in
        (-residual, residual), zeros without one)."""
        out = self.head_parts(x)
        c = self.channels
        fill = torch.sigmoid(out[:, 1 : 1 + c])
        if self.fill == "extended":
            fill = fill * (1 + 2 * EXTEND) - EXTEND
        if self.residual:
            correction = self.residual * torch.tanh(out[:, 1 + c :])
        else:
            correction = torch.zeros_like(fill)
        return out[:, :1], fill, correction

    def compose(
        self,
        x: torch.Tensor,
        mask_logit: torch.Tensor,
        fill: torch.Tensor,
        correction: torch.Tensor,
    ) -> torch.Tensor:
        """The output from the parts (not clipped)."""
        mask = torch.sigmoid(mask_logit)
        return (1 - mask) * (x + correction) + mask * fill

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.compose(x, *self.parts(x))

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted mask (N, 1, H, W), for plots."""
        return torch.sigmoid(self.parts(x)[0])


def _check_fill(fill: str) -> None:
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}; allowed: {', '.join(FILLS)}")


def _pad4(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """x padded (edge pixels repeated) on the bottom / right to sides that are multiples of 4."""
    h, w = int(x.shape[-2]), int(x.shape[-1])  # fixed per model set; only N is dynamic
    padded = bool(h % 4 or w % 4)
    if padded:
        x = F.pad(x, (0, -w % 4, 0, -h % 4), mode="replicate")
    return x, padded


class MaskedConvAutoencoder(MaskedAutoencoder):
    """Two-level U-Net: enc (C -> w, H) -> down (2w, H/2) -> down (4w, H/4) -> up with skips.
    Head: 1 mask logit + C fill channels. Any H, W: a side that is not a multiple of 4 is padded
    (edge pixels repeated) on the bottom / right, and the outputs are cropped back."""

    def __init__(
        self, in_channels: int, width: int = 16, fill: str = "sigmoid", residual: float = 0.0
    ) -> None:
        super().__init__()
        _check_fill(fill)
        self.fill = fill
        self.residual = residual
        self.channels = in_channels
        w = width
        self.enc1 = _block(in_channels, w)  # (N, w, H, W)
        self.enc2 = _block(w, 2 * w)  # (N, 2w, H/2, W/2)
        self.mid = _block(2 * w, 4 * w)  # (N, 4w, H/4, W/4)
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = _block(4 * w, 2 * w)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec1 = _block(2 * w + in_channels, w)
        # mask logit, fill (C), and with a residual the correction (C)
        self.head = nn.Conv2d(w, 1 + in_channels * (2 if residual else 1), 1)
        # Start with a nearly closed mask (sigmoid(-4) ~ 0.02): the identity is the default.
        nn.init.constant_(self.head.bias[:1], -4.0)
        if residual:  # and no correction
            nn.init.zeros_(self.head.weight[1 + in_channels :])
            nn.init.zeros_(self.head.bias[1 + in_channels :])

    def head_parts(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        x, padded = _pad4(x)
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1, x], 1))
        out = self.head(d1)
        return out[..., :h, :w] if padded else out


class SlimMaskedAutoencoder(MaskedAutoencoder):
    """The `slim` AE: space-to-depth by 2, a one-level U-Net at H/2 (w) and H/4 (2w), the head
    at H/2 with 4 x (1 + C (+ C)) channels, depth-to-space back to (1 + C (+ C), H, W). Sides
    that are not multiples of 4 are padded and cropped as in MaskedConvAutoencoder."""

    def __init__(
        self, in_channels: int, width: int = 16, fill: str = "sigmoid", residual: float = 0.0
    ) -> None:
        super().__init__()
        _check_fill(fill)
        self.fill = fill
        self.residual = residual
        self.channels = in_channels
        w, folded = width, 4 * in_channels
        self.enc = _block(folded, w)  # (N, w, H/2, W/2)
        self.mid = _block(w, 2 * w)  # (N, 2w, H/4, W/4)
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec = _block(2 * w + folded, w)
        per_pixel = 1 + in_channels * (2 if residual else 1)
        self.head = nn.Conv2d(w, 4 * per_pixel, 1)  # depth-to-space: channel k -> k // 4
        nn.init.constant_(self.head.bias[:4], -4.0)  # the mask's 4 sub-pixels: nearly closed
        if residual:
            nn.init.zeros_(self.head.weight[4 * (1 + in_channels) :])
            nn.init.zeros_(self.head.bias[4 * (1 + in_channels) :])

    def head_parts(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        x, padded = _pad4(x)
        z = F.pixel_unshuffle(x, 2)
        e = self.enc(z)
        m = self.mid(self.pool(e))
        d = self.dec(torch.cat([self.up(m), e, z], 1))
        out = F.pixel_shuffle(self.head(d), 2)
        return out[..., :h, :w] if padded else out


class SlimFullResAutoencoder(SlimMaskedAutoencoder):
    """`slim-fr`: the slim AE plus a thin branch at full resolution that refines the correction
    (issue 20: the slim students lost the faint full-image noise trigger, which the conv AE's
    full-resolution layers undo). The branch reads the image and the slim head's parts and adds
    to the correction's pre-activation: conv 3x3 (C + 1 + 2C -> r) -> ReLU -> conv 3x3 (r -> C),
    about 20 r multiply-adds per pixel for grey images. Needs a residual."""

    def __init__(
        self,
        in_channels: int,
        width: int = 16,
        fill: str = "sigmoid",
        residual: float = 0.0,
        refine_width: int = 8,
    ) -> None:
        if not residual:
            raise ValueError("slim-fr refines the correction: give it a residual > 0")
        super().__init__(in_channels, width, fill, residual)
        c = in_channels
        first = nn.Conv2d(c + 1 + 2 * c, refine_width, 3, padding=1)
        out = nn.Conv2d(refine_width, c, 3, padding=1)
        nn.init.zeros_(out.weight)  # starts as the slim AE: no refinement
        nn.init.zeros_(out.bias)
        self.refine = nn.Sequential(first, nn.ReLU(inplace=True), out)

    def head_parts(self, x: torch.Tensor) -> torch.Tensor:
        out = super().head_parts(x)
        c = self.channels
        correction = out[:, 1 + c :] + self.refine(torch.cat([x, out], 1))
        return torch.cat([out[:, : 1 + c], correction], 1)


class Clamp01(nn.Module):
    """Wraps an AE so that its output is clipped to [0, 1] (the model contract)."""

    def __init__(self, ae: nn.Module) -> None:
        super().__init__()
        self.ae = ae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ae(x).clamp(0.0, 1.0)


def build_autoencoder(
    arch: str,
    in_channels: int,
    size: int,
    width: int = 16,
    fill: str = "sigmoid",
    residual: float = 0.0,
) -> nn.Module:
    if arch == "mlp":
        ae: nn.Module = MLPAutoencoder(in_channels, size)
    elif arch == "conv":
        ae = MaskedConvAutoencoder(in_channels, width, fill, residual)
    elif arch == "slim":
        ae = SlimMaskedAutoencoder(in_channels, width, fill, residual)
    elif arch == "slim-fr":
        ae = SlimFullResAutoencoder(in_channels, width, fill, residual)
    else:
        raise ValueError(f"unknown autoencoder {arch!r}; allowed: {', '.join(AUTOENCODERS)}")
    return Clamp01(ae)
