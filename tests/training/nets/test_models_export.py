from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from training.nets.autoencoders import build_autoencoder
from training.nets.export import (
    ParityError,
    check_parity,
    export_and_check,
    export_onnx,
    sha256,
    write_samples,
)
from training.nets.models import build_target


@pytest.mark.parametrize(
    ("arch", "channels", "size"),
    [("kwon_cnn", 1, 28), ("resnet_small", 3, 32), ("vgg19", 3, 32)],
)
def test_target_output_shapes(arch, channels, size):
    torch.manual_seed(0)
    m = build_target(
        arch,
        channels,
        10,
        size,
        [0.5] * channels,
        [0.25] * channels,
        (8, 8, 16, 16) if arch == "resnet_small" else None,
    ).eval()
    with torch.no_grad():
        assert m(torch.rand(3, channels, size, size)).shape == (3, 10)


def test_unknown_architectures_list_allowed():
    with pytest.raises(ValueError, match="kwon_cnn, vgg19, resnet_small"):
        build_target("lenet", 1, 10, 28, [0.5], [0.5])
    with pytest.raises(ValueError, match="mlp, conv, slim"):
        build_autoencoder("vae", 1, 28)


@pytest.mark.parametrize(
    ("arch", "channels", "size"),
    # 15 and 30: the conv AE pads a side that is not a multiple of 4 and crops back.
    [
        ("mlp", 1, 28),
        ("conv", 1, 28),
        ("mlp", 3, 32),
        ("conv", 3, 32),
        ("conv", 1, 15),
        ("conv", 3, 30),
        ("slim", 1, 28),
        ("slim", 3, 32),
        ("slim", 1, 15),
        ("slim", 3, 30),
    ],
)
def test_autoencoder_shapes_and_range(arch, channels, size):
    torch.manual_seed(0)
    ae = build_autoencoder(arch, channels, size, width=4).eval()
    x = torch.rand(2, channels, size, size)
    with torch.no_grad():
        y = ae(x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize("arch", ["conv", "slim"])
def test_masked_autoencoder_starts_close_to_identity(arch):
    # The mask bias starts at -4: an untrained masked AE already leaves images almost unchanged.
    torch.manual_seed(0)
    ae = build_autoencoder(arch, 1, 28, width=4).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert (ae(x) - x).abs().mean() < 0.05


def test_export_parity_with_onnxruntime(tmp_path):
    torch.manual_seed(0)
    target = build_target("kwon_cnn", 1, 10, 28, [0.13], [0.31]).eval()
    ae = build_autoencoder("conv", 1, 28, width=4).eval()
    batch = torch.rand(5, 1, 28, 28)
    t = export_and_check(target, batch, tmp_path / "target.onnx", "images", "logits")
    a = export_and_check(ae, batch, tmp_path / "detrigger.onnx", "images", "images_out")
    assert t["parity_max_abs_diff"] <= 1e-4 and a["parity_max_abs_diff"] <= 1e-4
    assert t["sha256"] == sha256(tmp_path / "target.onnx") and len(t["sha256"]) == 64

    import onnx
    import onnxruntime as ort

    model = onnx.load(tmp_path / "target.onnx")
    assert model.opset_import[0].version == 17
    sess = ort.InferenceSession(str(tmp_path / "target.onnx"))
    assert sess.get_inputs()[0].name == "images" and sess.get_outputs()[0].name == "logits"
    (out,) = sess.run(None, {"images": np.random.rand(7, 1, 28, 28).astype(np.float32)})
    assert out.shape == (7, 10)  # dynamic batch


class _Sloppy(nn.Module):
    """Exports one graph, then behaves differently in torch: parity must fail."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10] + self.offset


def test_conv_autoencoder_of_an_odd_size_exports_with_parity(tmp_path):
    torch.manual_seed(0)
    ae = build_autoencoder("conv", 3, 30, width=4).eval()
    path = tmp_path / "ae.onnx"
    export_onnx(ae, torch.rand(2, 3, 30, 30), path, "images", "images_out")
    assert check_parity(ae, path, torch.rand(5, 3, 30, 30)) < 1e-4  # another batch size too


def test_parity_check_fails_on_mismatch(tmp_path):
    m = _Sloppy()
    batch = torch.rand(3, 1, 28, 28)
    export_and_check(m, batch, tmp_path / "m.onnx", "images", "logits")
    m.offset = 1e-3  # torch now differs from the exported graph by 1e-3 > 1e-4
    with pytest.raises(ParityError, match="1e-04|0.0001"):
        check_parity(m, tmp_path / "m.onnx", batch)


def test_write_samples_names_and_pixels(tmp_path):
    from PIL import Image

    clean = np.zeros((2, 1, 4, 4), np.float32)
    trig = clean.copy()
    trig[:, :, :2, :2] = 1.0
    names = write_samples(tmp_path, clean, trig, np.array([7, 3]))
    assert names == [
        "clean_00_label7.png",
        "triggered_00_label7.png",
        "clean_01_label3.png",
        "triggered_01_label3.png",
    ]
    a = np.asarray(Image.open(tmp_path / "triggered_01_label3.png"))
    assert a.shape == (4, 4) and a[:2, :2].min() == 255 and a[2:].max() == 0


def test_residual_extended_autoencoder_exports_with_parity(tmp_path):
    """The shipped random-trigger AE's head (extended fill, bounded correction) through ONNX."""
    torch.manual_seed(0)
    ae = build_autoencoder("conv", 3, 32, width=4, fill="extended", residual=0.35).eval()
    with torch.no_grad():
        ae.ae.head.weight.normal_(0.0, 0.5)  # a non-trivial correction and fill
    batch = torch.rand(5, 3, 32, 32)
    a = export_and_check(ae, batch, tmp_path / "detrigger.onnx", "images", "images_out")
    assert a["parity_max_abs_diff"] <= 1e-4
    with torch.no_grad():
        assert (ae(batch) - batch).abs().max() > 0.01  # the parity is not that of an identity


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 30)])
def test_slim_autoencoder_exports_with_parity(tmp_path, channels, size):
    """The slim student (space-to-depth, depth-to-space) through ONNX, at a side that is not a
    multiple of 4 too; its mask is still per pixel after the depth-to-space."""
    torch.manual_seed(0)
    ae = build_autoencoder("slim", channels, size, width=4, fill="extended", residual=0.35)
    ae = ae.eval()
    with torch.no_grad():
        ae.ae.head.weight.normal_(0.0, 0.5)
    batch = torch.rand(5, channels, size, size)
    a = export_and_check(ae, batch, tmp_path / "detrigger.onnx", "images", "images_out")
    assert a["parity_max_abs_diff"] <= 1e-4
    with torch.no_grad():
        mask = ae.ae.mask(batch)
        assert mask.shape == (5, 1, size, size)
        # neighbouring pixels of one 2 x 2 block get masks of their own
        assert (mask[:, :, 0::2, 0::2] - mask[:, :, 1::2, 1::2]).abs().max() > 1e-3


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 30)])
def test_slim_fr_refines_the_slim_correction_and_exports_with_parity(tmp_path, channels, size):
    """slim-fr: the slim AE plus a full-resolution branch added to the correction; zero at the
    start (the slim AE's output), trained weights change the output, parity through ONNX."""
    torch.manual_seed(0)
    kw = {"width": 4, "fill": "extended", "residual": 0.35}
    fr = build_autoencoder("slim-fr", channels, size, **kw).eval()
    slim = build_autoencoder("slim", channels, size, **kw).eval()
    slim.ae.load_state_dict({k: v for k, v in fr.ae.state_dict().items() if "refine" not in k})
    batch = torch.rand(5, channels, size, size)
    with torch.no_grad():
        # equal up to the last bits (tanh on a copied slice may take another vector kernel)
        assert torch.allclose(fr(batch), slim(batch), atol=1e-6)
        fr.ae.refine[2].weight.normal_(0.0, 0.5)
        assert (fr(batch) - slim(batch)).abs().max() > 1e-3
    a = export_and_check(fr, batch, tmp_path / "detrigger.onnx", "images", "images_out")
    assert a["parity_max_abs_diff"] <= 1e-4
    with pytest.raises(ValueError, match="residual"):
        build_autoencoder("slim-fr", channels, size, width=4)
