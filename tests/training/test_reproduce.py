"""End to end on generated data: a tiny preset goes through training, evaluation, export and the
report, and the model set follows docs/model-contract.md."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.training.conftest import make_cifar_dataset
from training import reproduce
from training.config import AEConfig, Preset, TargetConfig
from training.evaluation import report as rep
from training.nets.manifest_file import sha256


def test_reproduce_writes_a_contract_model_set(tiny_preset, tmp_path):
    args = tiny_preset
    report = reproduce.run_dataset("mnist", args)
    rep.write_readme(tmp_path / "reports")
    folder = tmp_path / "models" / "mnist"
    m = json.loads((folder / "manifest.json").read_text())
    assert m["name"] == "mnist" and m["input"] == {"height": 28, "width": 28, "channels": 1}
    assert m["classes"] == [str(i) for i in range(10)]
    for key, out_name in (("target", "logits"), ("detrigger", "images_out")):
        entry = m[key]
        assert entry["sha256"] == sha256(folder / entry["file"])
        assert entry["input_name"] == "images" and entry["output_name"] == out_name
    assert m["decision"]["rule"] in ("class_change", "score")
    assert m["decision"]["calibration"]["target_fpr"] == 0.04
    strip = m["detectors"]["strip"]  # STRIP calibrated for the same FPR on the same split
    assert (strip["n"], strip["bank"]["images"]) == (4, 12)
    assert strip["calibration"]["target_fpr"] == 0.04 and strip["calibration"]["n"] == 28
    assert strip["bank"]["sha256"] == sha256(folder / strip["bank"]["file"])
    assert report["strip"]["threshold_bits"] == strip["threshold"]
    assert m["decision"]["score"] in ("prob_drop", "kl")
    assert m["backdoor"] == {
        "target_class": 0,
        "poison_rate": 0.1,
        "trigger": {"kind": "patch", "size": 4, "position": "top-left", "value": 1.0},
    }
    for k in (
        "clean_accuracy",
        "attack_success_rate",
        "detection_rate",
        "false_positive_rate",
        "auroc",
    ):
        assert 0.0 <= m["evaluation"][k] <= 1.0
    samples = sorted(p.name for p in (folder / "samples").iterdir())
    assert len(samples) == 16 and samples[0].startswith("clean_00_label")
    assert {s["file"].split("/")[1] for s in m["samples"]} == set(samples)

    # The exported pair reproduces the reported clean accuracy through ONNX Runtime.
    from training.data.datasets import load_dataset

    test = load_dataset("mnist", "test", args.data_dir)
    sess = ort.InferenceSession(str(folder / "target.onnx"))
    (logits,) = sess.run(None, {"images": test.images.astype(np.float32) / 255})
    acc = float((logits.argmax(1) == test.labels).mean())
    assert acc == pytest.approx(report["results"]["conv"]["clean_accuracy"], abs=1e-9)
    ae = ort.InferenceSession(str(folder / "detrigger.onnx"))
    (out,) = ae.run(None, {"images": test.images[:3].astype(np.float32) / 255})
    assert out.shape == (3, 1, 28, 28) and out.min() >= 0 and out.max() <= 1

    rep_dir = tmp_path / "reports" / "mnist"
    for f in ("report.json", "report.md", "bars.png", "roc.png", "examples.png"):
        assert (rep_dir / f).is_file()
    assert "| mnist |" in (tmp_path / "reports" / "README.md").read_text()


def test_a_preset_tolerance_gates_the_shipped_ae(tiny_preset, tmp_path):
    """Preset.unchanged_tolerance: the AE gated (training/nets/gate.py) and the decision
    calibrated again on the gated graph, before STRIP and both are calibrated on it."""
    reproduce.PRESETS["mnist"] = replace(reproduce.PRESETS["mnist"], unchanged_tolerance=0.05)
    reproduce.run_dataset("mnist", tiny_preset)
    folder = tmp_path / "models" / "mnist"
    m = json.loads((folder / "manifest.json").read_text())
    gate = m["detrigger"]["gate"]
    assert m["detrigger"]["unchanged_tolerance"] == 0.05 and gate["tolerance"] == 0.05
    assert "--unchanged-tolerance 0.05" in gate["command"]
    assert m["detrigger"]["sha256"] == sha256(folder / "detrigger.onnx")
    ae = ort.InferenceSession(str(folder / "detrigger.onnx"))
    x = np.zeros((2, 1, 28, 28), np.float32)
    x[1] = 1.0
    (out,) = ae.run(None, {"images": x})
    moved = np.abs(out - x).reshape(2, -1).max(axis=1)
    assert all(d == 0.0 or d > 0.05 for d in moved)  # returned bit for bit, or moved past T
    assert m["detectors"]["strip"]["calibration"]["target_fpr"] == 0.04


def test_rerun_from_scratch_gives_the_same_numbers(tiny_preset, tmp_path):
    first = reproduce.run_dataset("mnist", tiny_preset)
    tiny_preset.run_dir = str(tmp_path / "runs2")  # no checkpoints: trains again
    second = reproduce.run_dataset("mnist", tiny_preset)
    assert first["results"] == second["results"]
    third = reproduce.run_dataset("mnist", tiny_preset)  # reloads the finished checkpoints
    assert third["results"] == first["results"]


def test_readme_lists_datasets_without_a_report():
    from training.evaluation.report import readme

    text = readme({}, ("cifar10",))
    assert "| cifar10 | not produced yet: run `make reproduce DATASET=cifar10`" in text
    assert "90.94 / 91.24" in text  # the paper's figures stay beside it


def test_reproduce_rgb_cifar_layout(monkeypatch, tmp_path):
    # The CIFAR-10 path (RGB, resnet_small, flip-translate, SGD, focused poisoning) end to end on
    # generated batches.
    make_cifar_dataset(tmp_path / "data" / "cifar10", per_batch=40)
    tiny = Preset(
        name="cifar10",
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
        target=TargetConfig(
            dataset="cifar10",
            arch="resnet_small",
            widths=(4, 4, 8, 8),
            epochs=1,
            batch_size=32,
            optimizer="sgd",
            lr=0.05,
            augment="flip-translate",
            label_smoothing=0.2,
            val_size=40,
            threads=1,
            poison_focus=0.5,
        ),
        autoencoders={
            "mlp": AEConfig(arch="mlp", epochs=1, batch_size=32, threads=1),
            "conv": AEConfig(arch="conv", epochs=1, batch_size=32, width=4, threads=1),
        },
        target_fpr=0.05,
        strip_bank_size=12,
        strip_n=4,
        confidence=0.0,  # 40 validation images bound no FPR at a confidence: plain quantile
    )
    monkeypatch.setattr(reproduce, "PRESETS", {"cifar10": tiny})
    args = argparse.Namespace(
        data_dir=str(tmp_path / "data"),
        download=False,
        models_dir=str(tmp_path / "models"),
        reports_dir=str(tmp_path / "reports"),
        run_dir=str(tmp_path / "runs"),
    )
    reproduce.run_dataset("cifar10", args)
    folder = tmp_path / "models" / "cifar10"
    m = json.loads((folder / "manifest.json").read_text())
    assert m["input"] == {"height": 32, "width": 32, "channels": 3}
    assert m["target"]["architecture"] == "resnet_small"
    assert m["training"]["target"]["poison_focus"] == 0.5
    from PIL import Image

    img = Image.open(folder / "samples" / m["samples"][8]["file"].split("/")[1])
    assert img.mode == "RGB" and img.size == (32, 32)
    assert np.asarray(img)[:4, :4].min() == 255  # the triggered sample carries the patch


def test_readme_says_when_the_poisoning_was_focused():
    from training.evaluation.report import readme

    repo = Path(__file__).resolve().parents[2]
    rep = json.loads((repo / "reports" / "cifar10" / "report.json").read_text())
    rep["training"]["target"]["poison_focus"] = 0.5
    text = readme({"cifar10": rep}, ("cifar10",))
    assert "- cifar10: the attacker drew 50.00% of the poisoned copies from the training" in text
    rep["training"]["target"]["poison_focus"] = 0.0
    assert "the attacker drew" not in readme({"cifar10": rep}, ("cifar10",))
