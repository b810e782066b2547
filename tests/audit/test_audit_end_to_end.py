"""End to end: audit a tiny backdoored model (trained in seconds on generated data) and a clean
twin. The backdoored one must be flagged with the right target class and repaired; the clean one
must not be flagged."""

from __future__ import annotations

import torch

from tests.support.tiny_backdoor import BACKDOOR, CLASSES, TARGET, make_data
from training.audit.onnx_torch import load_onnx_module
from training.audit.pipeline import AuditConfig, run_audit
from training.audit.synthesis import SynthConfig
from training.audit.unlearn import UnlearnConfig

CFG = AuditConfig(
    synth=SynthConfig(steps=400, batch_size=32, check_every=10),
    unlearn=UnlearnConfig(lr=3e-3, dilate=0),
)  # 15x15: blobs lie near the corner


def _data():
    synth_x, _ = make_data(200, seed=11)
    train_x, train_y = make_data(1500, seed=12)
    test_x, test_y = make_data(800, seed=13)
    t = torch.from_numpy
    return t(synth_x), t(train_x), t(train_y), t(test_x), t(test_y)


def test_audit_flags_and_repairs_backdoored(tiny_backdoored) -> None:
    _, path = tiny_backdoored
    model = load_onnx_module(path)
    synth_x, train_x, train_y, test_x, test_y = _data()
    res = run_audit(
        model, synth_x, train_x, train_y, test_x, test_y, CLASSES, CFG, BACKDOOR, progress=False
    )
    s = res.summary
    assert s["flagged"] and s["target_classes"] == [TARGET]
    assert s["target_named_correctly"] is True
    ident = s["identification"]
    assert ident["synth_asr_test"] > 0.9
    # The mask sits at the real 3x3 patch in the bottom-right corner (often shifted by a pixel,
    # so the IoU is modest): most of its mass lies in the corner's 5x5 block.
    mask = res.synth.masks[TARGET]  # (15, 15)
    assert mask[10:, 10:].sum() > 0.8 * mask.sum()
    assert ident["iou_top_k"] > 0.0
    assert ident["neuron_overlap"]["cosine"] > 0.5
    rep = s["repair"]
    assert rep["before"]["real_asr"] > 0.9
    assert rep["unlearning"]["real_asr"] < 0.1
    assert rep["unlearning"]["clean_accuracy"] > rep["before"]["clean_accuracy"] - 0.05
    assert rep["pruning"]["synth_asr"] < rep["before"]["synth_asr"]
    assert res.prune_curve[0]["pruned"] == 0
    assert res.prune_curve[0]["asr_real"] == rep["before"]["real_asr"]


def test_audit_does_not_flag_clean(tiny_clean) -> None:
    _, path = tiny_clean
    model = load_onnx_module(path)
    synth_x, train_x, train_y, test_x, test_y = _data()
    res = run_audit(
        model, synth_x, train_x, train_y, test_x, test_y, CLASSES, CFG, None, progress=False
    )
    assert not res.summary["flagged"], res.summary["per_class"]
    assert res.summary["repair"] is None and res.unlearned is None
