"""End to end: audit a tiny backdoored model (trained in seconds on generated data) and a clean
twin. The backdoored one must be flagged with the right target class and repaired; the clean one
must not be flagged."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import torch

from tests.support.tiny_backdoor import BACKDOOR, CLASSES, TARGET, TRIGGER, make_data
from training.config import AEConfig
from training.fit.autoencoder import train_autoencoder
from training.inversion.pipeline import AuditConfig, run_audit
from training.inversion.render import write_report
from training.inversion.restarts import NAMED_REGIONS
from training.inversion.synthesis import SynthConfig
from training.inversion.unlearn import UnlearnConfig
from training.nets.onnx_torch import load_onnx_module

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


def test_audit_flags_and_repairs_backdoored(tiny_backdoored, tmp_path) -> None:
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
    # Without the trigger, images of other classes are not sent to the target: the ASR's floor.
    assert rep["before"]["clean_to_target"] < 0.05
    assert rep["unlearning"]["clean_to_target"] <= rep["unlearning"]["real_asr"] + 0.02
    assert rep["unlearning"]["real_asr"] < 0.1
    assert rep["unlearning"]["clean_accuracy"] > rep["before"]["clean_accuracy"] - 0.05
    assert rep["pruning"]["synth_asr"] < rep["before"]["synth_asr"]
    assert res.prune_curve[0]["pruned"] == 0
    assert res.prune_curve[0]["asr_real"] == rep["before"]["real_asr"]
    # Restarts: the flagged class searched again from 5 starts; the smallest trigger identifies,
    # the kept ones are unlearned.
    r = s["restarts"]
    assert r["count"] == 5 and len(r["candidates"]) == len(res.candidates) == 6
    assert {c["start"] for c in r["candidates"]} == {"sweep", *NAMED_REGIONS}
    reached = [c["mask_l1"] for c in r["candidates"] if c["reached_asr_target"]]
    assert reached == sorted(reached) and reached[0] == ident["mask_l1"]
    assert res.repair_triggers[0] is res.candidates[0]
    assert [c["kept"] for c in r["candidates"]].count(True) == len(res.repair_triggers)
    # every trigger found for the class is unlearned: the kept masks, and a full-image family's
    # trigger where that family flagged the class too
    assert all(TARGET in s["families"][t.family]["flagged"] for t in res.repair_full)
    assert rep["unlearning"]["triggers"] == len(res.repair_triggers) + len(res.repair_full)
    best = res.candidates[0].mask
    assert best[10:, 10:].sum() > 0.8 * best.sum()

    report = {
        "model_set": "tiny", "classes": [str(k) for k in range(CLASSES)], "summary": s,
        "exported": None, "config": {}, "command": "test", "seed": 0, "hardware": "test",
        "versions": {}, "wall_seconds": 1.0,
        "data": {"synthesis_images": 200, "test_images": 800, "train_images": 1500},
    }  # fmt: skip
    s["seconds"] = {}
    write_report(tmp_path, report, res.synth, res.prune_curve, res.candidates, res.repair_triggers)
    npz = np.load(tmp_path / "triggers.npz")
    assert npz["candidate_masks"].shape == (6, 15, 15)
    assert np.array_equal(npz["repair_masks"][0], best)
    assert len(npz["repair_patterns"]) == len(res.repair_triggers)
    readme = (tmp_path / "README.md").read_text()
    assert "### Restarts" in readme and (tmp_path / "restarts.png").is_file()


def test_audit_does_not_flag_clean(tiny_clean) -> None:
    _, path = tiny_clean
    model = load_onnx_module(path)
    synth_x, train_x, train_y, test_x, test_y = _data()
    res = run_audit(
        model, synth_x, train_x, train_y, test_x, test_y, CLASSES, CFG, None, progress=False
    )
    assert not res.summary["flagged"], res.summary["per_class"]
    assert res.summary["repair"] is None and res.unlearned is None
    assert res.summary["restarts"]["count"] == 0 and len(res.candidates) == 1


def test_an_ae_trained_only_on_the_audits_trigger_removes_the_real_one(
    tiny_backdoored, tmp_path
) -> None:
    """Issue 6, item 6: the audit's synthesised trigger is all this AE knows of the attack."""
    net, path = tiny_backdoored
    synth_x, train_x, train_y, test_x, test_y = _data()
    res = run_audit(
        load_onnx_module(path),
        synth_x, train_x, train_y, test_x, test_y, CLASSES,
        replace(CFG, repair="never"), BACKDOOR, progress=False,
    )  # fmt: skip
    assert res.summary["target_classes"] == [TARGET]
    audit = tmp_path / "audit"  # the two files of training.inversion.render.write_report it reads
    audit.mkdir()
    np.savez(audit / "triggers.npz", masks=res.synth.masks, patterns=res.synth.patterns)
    (audit / "audit.json").write_text(json.dumps({"summary": res.summary}))

    cfg = AEConfig(
        arch="conv", epochs=4, batch_size=64, lr=3e-3, width=8, threads=1,
        triggers="none", synthesised=str(audit), synthesised_dilate=1,
    )  # fmt: skip
    uint8 = (train_x * 255).round().to(torch.uint8).numpy()
    ae = train_autoencoder(cfg, uint8, tmp_path / "run", log=lambda _: None)
    pos = test_y != TARGET
    triggered = TRIGGER(test_x[pos])
    with torch.no_grad():
        before = (net(triggered).argmax(1) == TARGET).float().mean().item()
        after = (net(ae(triggered)).argmax(1) == TARGET).float().mean().item()
        kept = (net(ae(test_x)).argmax(1) == net(test_x).argmax(1)).float().mean().item()
    assert before > 0.9
    assert after < 0.2, (before, after)
    assert kept > 0.95  # clean images keep their class: no blanket false positives
