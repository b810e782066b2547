"""The audit's full-image trigger families (training/inversion/fullimage.py): the torch warp is
the attack suite's warp, a blended backdoor is found by the blend family and repaired by
unlearning it, and a clean model is left alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.support.tiny_backdoor import CLASSES, TARGET, make_data, train_tiny
from training.data import transforms
from training.data.triggers import Trigger
from training.inversion.fullimage import (
    FullImageTrigger,
    blend,
    synthesize_family,
    warp,
    warp_field,
)
from training.inversion.pipeline import AuditConfig, run_audit
from training.inversion.synthesis import SynthConfig
from training.inversion.unlearn import UnlearnConfig, unlearn
from training.nets.export import export_onnx
from training.nets.onnx_torch import load_onnx_module

BLEND = Trigger(kind="blend", alpha=0.15, content="noise", seed=3)
SYNTH = SynthConfig(steps=300, lr=0.1, asr_target=0.9, beta_init=1e-2)


def test_the_torch_warp_is_the_suites_warp() -> None:
    """The search's differentiable warp resamples exactly as training.data.transforms.warp (the
    suite's WaNet trigger) for the same displacement field."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (3, 2, 11, 13)).astype(np.float32)
    control = rng.uniform(-1, 1, (1, 2, 4, 4))
    field = transforms.warp_field(control, 11, 13, np.float32([2.0]))  # (1, 2, 11, 13)
    want = transforms.warp(x, np.broadcast_to(field, (3, 2, 11, 13)))
    got = warp(torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(field)))
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    # a zero field leaves the images as they are; K fields give K * B images, class-major
    zero = warp(torch.from_numpy(x), torch.zeros(2, 2, 11, 13))
    assert zero.shape == (6, 2, 11, 13)
    np.testing.assert_allclose(zero.numpy()[3:], x, atol=1e-6)


def test_blend_and_the_trigger_object_agree() -> None:
    x = torch.rand(4, 1, 6, 6)
    pattern = torch.rand(2, 1, 6, 6)
    out = blend(x, torch.tensor([0.0, 0.25]), pattern)
    assert out.shape == (8, 1, 6, 6)
    torch.testing.assert_close(out[:4], x)
    torch.testing.assert_close(out[4:], 0.75 * x + 0.25 * pattern[1])
    t = FullImageTrigger("blend", 0.25, alpha=0.25, pattern=pattern[1].numpy())
    torch.testing.assert_close(t(x), out[4:])
    field = warp_field(torch.ones(1, 2, 4, 4), 6, 6)
    assert field.shape == (1, 2, 6, 6) and torch.allclose(field, torch.ones_like(field))


@pytest.fixture(scope="module")
def tiny_blended():
    torch.set_num_threads(1)
    return train_tiny(poison=True, trigger=BLEND, epochs=6)


def _data():
    t = torch.from_numpy
    synth_x, _ = make_data(200, seed=11)
    train_x, train_y = make_data(1500, seed=12)
    test_x, test_y = make_data(800, seed=13)
    return t(synth_x), t(train_x), t(train_y), t(test_x), t(test_y)


def test_the_blend_family_finds_a_blended_backdoors_class(tiny_blended) -> None:
    synth_x = _data()[0]
    res = synthesize_family("blend", tiny_blended, synth_x, CLASSES, SYNTH, progress=False)
    assert res.reached[TARGET]
    index = res.anomaly_index()
    assert int(np.argmax(index)) == TARGET and index[TARGET] > 3, (res.size, index)
    # the target's blend weight is of the real trigger's order, the others' far larger
    assert res.size[TARGET] < 2 * BLEND.alpha < np.median(res.size)


def test_the_audit_flags_and_unlearns_a_blended_backdoor(tiny_blended, tmp_path) -> None:
    synth_x, train_x, train_y, test_x, test_y = _data()
    path = tmp_path / "target.onnx"
    export_onnx(tiny_blended, torch.rand(2, 1, 15, 15), path, "images", "logits")
    model = load_onnx_module(path)  # the audit works on the ONNX graph as torch
    cfg = AuditConfig(
        synth=SynthConfig(steps=300), family_synth=SYNTH, unlearn=UnlearnConfig(lr=3e-3)
    )
    backdoor = {"target_class": TARGET, "trigger": BLEND.to_dict()}
    res = run_audit(
        model, synth_x, train_x, train_y, test_x, test_y, CLASSES, cfg, backdoor, progress=False
    )
    s = res.summary
    assert s["flagged"] and s["target_classes"][0] == TARGET, s["families"]
    assert TARGET in s["families"]["blend"]["flagged"]
    assert any(t.family == "blend" for t in res.repair_full)
    rep = s["repair"]
    assert rep["before"]["real_asr"] > 0.8
    assert rep["unlearning"]["real_asr"] < 0.2, rep["unlearning"]
    assert rep["unlearning"]["clean_accuracy"] > rep["before"]["clean_accuracy"] - 0.05


def test_unlearning_with_full_image_triggers_alone_stamps_them() -> None:
    """No mask at all: every stamped image carries one of the full-image triggers, drawn per
    image; the clean ones stay clean."""
    seen: list[torch.Tensor] = []

    class Spy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.detach().clone())
            return torch.zeros(len(x), 2) + self.w

    images = torch.zeros(40, 1, 4, 4, dtype=torch.uint8)
    marks = [lambda x: x + 0.25, lambda x: x + 0.5]
    cfg = UnlearnConfig(clean_share=0.5, trigger_share=0.5, batch_size=40, dilate=0)
    unlearn(Spy(), images, torch.zeros(40, dtype=torch.long), torch.zeros(0, 4, 4),
            torch.zeros(0, 1, 4, 4), cfg, progress=False, others=marks)  # fmt: skip
    values = torch.cat(seen)[:, 0, 0, 0]
    assert (values == 0).sum() == 20  # the clean half
    assert (values == 0.25).sum() + (values == 0.5).sum() == 20
    assert (values == 0.25).sum() > 0 and (values == 0.5).sum() > 0
    with pytest.raises(ValueError, match="no trigger"):
        unlearn(Spy(), images, torch.zeros(40, dtype=torch.long), torch.zeros(0, 4, 4),
                torch.zeros(0, 1, 4, 4), cfg, progress=False)  # fmt: skip


def test_the_verdict_lists_mask_classes_first_then_families_by_index() -> None:
    from training.inversion.pipeline import verdict

    def fam(flagged: list[int], index: dict[int, float]) -> dict:
        return {
            "flagged": flagged,
            "per_class": [{"anomaly_index": index.get(k, 0.0)} for k in range(5)],
        }

    families = {"blend": fam([4, 1], {4: 6.0, 1: 3.5}), "warp": fam([2, 1], {2: 4.0, 1: 9.0})}
    assert verdict([3], families) == [3, 1, 4, 2]  # 1 by its larger (warp) index
    assert verdict([1], families) == [1, 4, 2]  # a class once
    assert verdict([], {}) == []


def test_the_audit_refuses_an_unknown_family() -> None:
    from training.audit.__main__ import families

    assert families("blend, warp") == ("blend", "warp") and families("none") == ()
    with pytest.raises(SystemExit, match="unknown wave"):
        families("blend,wave")
