"""End to end on generated data: `python -m training.suite` trains a tiny preset's target for each
attack of a tiny suite file, exports contract model sets whose manifests describe the attack,
resumes from its checkpoints, and fine-tunes from an existing target with --init-from."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.training.conftest import write_idx
from training import suite
from training.config import AEConfig, Preset, TargetConfig
from training.nets.manifest_file import sha256

TINY_SUITE = {
    "poison_rate": 0.1,
    "attacks": [
        {
            "name": "white",
            "description": "A 4x4 white square at the top-left, target 0.",
            "backdoors": [{"target_class": 0, "trigger": {"kind": "patch", "size": 4}}],
        },
        {
            "name": "pair",
            "description": "Two targets: a checkerboard at the bottom-right to 1, a blend to 2.",
            "poison_rate": 0.2,
            "backdoors": [
                {
                    "target_class": 1,
                    "trigger": {
                        "kind": "patch",
                        "size": 4,
                        "position": "bottom-right",
                        "content": "checkerboard",
                    },
                },
                {"target_class": 2, "trigger": {"kind": "blend", "alpha": 0.3, "seed": 1}},
            ],
        },
    ],
}


def _bars(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 28, 28) uint8: dim noise and a bright bar at row 6 + 2 * class, columns 8..19."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.uint8)
    x = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(y):
        x[i, 6 + 2 * int(c) : 8 + 2 * int(c), 8:20] = 230
    return x, y


@pytest.fixture
def tiny_suite(monkeypatch, tmp_path: Path) -> list[str]:
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    for prefix, n, seed in (("train", 900, 0), ("t10k", 200, 1)):
        x, y = _bars(n, seed)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y)
    tiny = Preset(
        name="mnist",
        mean=[0.5],
        std=[0.25],
        # A narrow resnet_small: kwon_cnn learns this easy clean task long before the backdoor.
        target=TargetConfig(
            dataset="mnist",
            arch="resnet_small",
            widths=(8, 8, 16, 16),
            epochs=4,
            batch_size=32,
            lr=3e-3,
            val_size=100,
            threads=1,
        ),
        autoencoders={"conv": AEConfig(arch="conv", epochs=1, batch_size=32, width=4, threads=1)},
        target_fpr=0.05,
        confidence=0.0,  # 100 validation images bound no 1% FPR at a confidence: plain quantile
    )
    monkeypatch.setattr(suite, "PRESETS", {"mnist": tiny})
    suite_file = tmp_path / "tiny_suite.json"
    suite_file.write_text(json.dumps(TINY_SUITE))
    return [
        "--dataset",
        "mnist",
        "--suite",
        str(suite_file),
        "--data-dir",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "suite"),
        "--run-dir",
        str(tmp_path / "runs"),
        "--threads",
        "1",
    ]


def test_suite_trains_exports_and_resumes(tiny_suite, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="training.suite")
    suite.main(tiny_suite)
    out = tmp_path / "suite" / "mnist"

    white = json.loads((out / "white" / "manifest.json").read_text())
    assert white["name"] == "mnist-white"
    assert white["backdoor"] == {  # the single-target shape of the shipped sets
        "target_class": 0,
        "poison_rate": 0.1,
        "trigger": {"kind": "patch", "size": 4, "position": "top-left", "value": 1.0},
    }
    assert white["training"]["suite"]["attack"] == "white"
    assert white["training"]["target"]["attack"] is None
    for key in ("target", "detrigger"):
        entry = white[key]
        assert entry["sha256"] == sha256(out / "white" / entry["file"])
    assert len(list((out / "white" / "samples").iterdir())) == 16

    pair = json.loads((out / "pair" / "manifest.json").read_text())
    backdoor = pair["backdoor"]
    assert backdoor["poison_rate"] == 0.2 and backdoor["target_class"] == 1
    assert [a["target_class"] for a in backdoor["attacks"]] == [1, 2]
    assert backdoor["attacks"][1]["trigger"] == {"kind": "blend", "alpha": 0.3, "seed": 1}
    assert backdoor["trigger"] == backdoor["attacks"][0]["trigger"]
    assert [a["target_class"] for a in pair["evaluation"]["attacks"]] == [1, 2]

    # Every backdoor was learnt, and the clean task too.
    for m in (white, pair):
        assert m["evaluation"]["clean_accuracy"] > 0.9
        for e in m["evaluation"].get("attacks", [m["evaluation"]]):
            assert e["attack_success_rate"] > 0.9, (m["name"], e)
    # The exported target carries the blend backdoor through ONNX Runtime too.
    from training.data.triggers import Trigger

    test_x = _bars(200, 1)[0][:, None].astype(np.float32) / 255
    keep = _bars(200, 1)[1] != 2
    blended = Trigger(kind="blend", alpha=0.3, seed=1)(test_x[keep])
    sess = ort.InferenceSession(str(out / "pair" / "target.onnx"))
    (logits,) = sess.run(None, {"images": blended})
    assert (logits.argmax(1) == 2).mean() > 0.9

    summary = (out / "summary.md").read_text()
    assert summary.count("| white |") == 1 and summary.count("| pair |") == 2
    assert set(json.loads((out / "summary.json").read_text())) == {"white", "pair"}
    report = json.loads((out / "reports" / "pair.json").read_text())
    assert len(report["pairs"]) == 2

    # A second run finds the finished checkpoints and gives the same numbers.
    caplog.clear()
    suite.main([*tiny_suite, "--attacks", "pair"])
    assert any("resuming target" in r.message and "epoch 4" in r.message for r in caplog.records)
    again = json.loads((out / "pair" / "manifest.json").read_text())
    assert again["evaluation"] == pair["evaluation"]


def test_suite_fine_tunes_from_an_existing_target(tiny_suite, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="training.suite")
    suite.main([*tiny_suite, "--attacks", "white"])
    start = tmp_path / "runs" / "mnist" / "suite" / "white" / "target.ckpt"
    caplog.clear()
    # The default fine-tuning lr (a tenth of the preset's) is too gentle for 90 steps; the
    # preset's own lr injects both backdoors into the white-square model in 3 epochs.
    args = ["--attacks", "pair", "--init-from", str(start), "--epochs", "3", "--lr", "3e-3"]
    # ... and pairs it with a random-trigger AE trained without blends, trained here first.
    args += ["--ae-triggers", "random", "--ae-exclude", "blend"]
    suite.main([*tiny_suite, *args])
    assert (tmp_path / "runs" / "mnist" / "detrigger_conv_random_w4_minus-blend.ckpt").is_file()
    assert any("fine-tuning the target from" in r.message for r in caplog.records)
    m = json.loads((tmp_path / "suite" / "mnist" / "pair" / "manifest.json").read_text())
    assert m["training"]["init_from"] == {"path": str(start), "sha256": sha256(start)}
    assert m["training"]["target"]["epochs"] == 3
    assert m["training"]["target"]["init_from"] == str(start)
    assert "fine-tuned from" in m["description"]
    assert "conv_random_w4_minus-blend de-trigger AE" in m["description"]
    ae = m["training"]["autoencoder"]
    assert (ae["triggers"], ae["exclude"]) == ("random", ["blend"])
    for e in m["evaluation"]["attacks"]:
        assert e["attack_success_rate"] > 0.8, e


def test_suite_refuses_bad_attack_names(tiny_suite, capsys):
    with pytest.raises(SystemExit):
        suite.main([*tiny_suite, "--attacks", "white,nope"])
    assert "unknown attack(s) nope; allowed: white, pair" in capsys.readouterr().err


def test_suite_fine_tunes_from_an_onnx_target(tiny_suite, tmp_path, caplog):
    """A shipped model set has no checkpoint, only target.onnx: --init-from takes the graph."""
    caplog.set_level(logging.INFO, logger="training.suite")
    suite.main([*tiny_suite, "--attacks", "white"])
    start = tmp_path / "suite" / "mnist" / "white" / "target.onnx"
    caplog.clear()
    args = ["--attacks", "pair", "--init-from", str(start), "--epochs", "3", "--lr", "3e-3"]
    suite.main([*tiny_suite, *args, "--out", str(tmp_path / "tuned")])
    assert any("fine-tuning the target from the ONNX graph" in r.message for r in caplog.records)
    m = json.loads((tmp_path / "tuned" / "mnist" / "pair" / "manifest.json").read_text())
    assert m["training"]["init_from"] == {"path": str(start), "sha256": sha256(start)}
    assert m["evaluation"]["clean_accuracy"] > 0.9
    for e in m["evaluation"]["attacks"]:
        assert e["attack_success_rate"] > 0.8, e
