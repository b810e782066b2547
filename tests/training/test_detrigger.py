from __future__ import annotations

import numpy as np
import torch

from training.autoencoders import build_autoencoder
from training.train_detrigger import AEConfig, detrigger_loss, make_ae_batch


def test_ae_batch_mixes_triggered_and_untouched_images():
    clean = torch.zeros(200, 1, 8, 8)
    cfg = AEConfig(triggered_share=0.5, trigger_size=2)
    x, target = make_ae_batch(clean, cfg, np.random.default_rng(0))
    assert torch.equal(target, clean)
    stamped = (x != clean).flatten(1).any(1)
    assert 70 < int(stamped.sum()) < 130  # about half
    assert ((x != clean).flatten(1).sum(1)[stamped] == 4).all()  # one 2x2 square each
    assert clean.sum() == 0  # input untouched


def test_conv_ae_learns_to_remove_corner_squares():
    # A few steps on tiny dark images: the mask loss teaches the AE where the squares are, so
    # the L2 error on triggered images drops well below leaving them as they are.
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = AEConfig(arch="conv", width=4, trigger_size=2, triggered_share=1.0)
    ae = build_autoencoder("conv", 1, 8, width=4)
    opt = torch.optim.Adam(ae.parameters(), lr=1e-2)
    clean = torch.rand(64, 1, 8, 8) * 0.3
    for _ in range(150):
        x, target = make_ae_batch(clean, cfg, rng)
        loss = detrigger_loss(ae, x, target, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, target = make_ae_batch(clean, cfg, rng)
    with torch.no_grad():
        err_ae = torch.mean((ae(x) - target) ** 2)
    err_identity = torch.mean((x - target) ** 2)
    assert err_ae < 0.2 * err_identity


def test_mlp_loss_is_plain_l2():
    torch.manual_seed(0)
    ae = build_autoencoder("mlp", 1, 8)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        want = torch.mean((ae(x) - x) ** 2)
        got = detrigger_loss(ae, x, x, AEConfig(arch="mlp"))
    assert torch.isclose(got, want)
