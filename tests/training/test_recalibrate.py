"""Re-calibration of a set on its own validation split (`detrigger-guard calibrate SET
--recorded-split`, training/evaluation/recalibration.py), end to end through the command on a
tiny model set and a tiny IDX dataset (issue 22)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from cli.main import main as guard_cli
from contract.manifest import read_manifest
from service.runtime.modelset import ModelSet
from service.settings import Settings
from tests.support.tiny_models import (
    TinySpec,
    add_trigger,
    build_model_set,
    clean_image,
    target_graph,
)
from tests.training.conftest import write_idx
from training.evaluation.detection import MIN_THRESHOLD
from training.evaluation.metrics import allowed_exceedances
from training.evaluation.recalibration import file_digests
from training.evaluation.strip import StripOptions, bank_and_calibration, calibrate_model_set

SPEC = TinySpec(name="tinycal", rule="score", score="prob_drop", threshold=0.5)
N_TRAIN, N_VAL, N_TEST, BANK = 400, 200, 30, 27


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A tiny MNIST-style dataset of the tiny set's clean images, classes 1..9."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    labels = 1 + np.arange(N_TRAIN) % 9
    images = np.stack([clean_image(SPEC, int(k), seed=i) for i, k in enumerate(labels)])
    write_idx(folder / "train-images-idx3-ubyte.gz", images)
    write_idx(folder / "train-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    test = np.stack([clean_image(SPEC, int(k), seed=9000 + i) for i, k in enumerate(labels)])
    write_idx(folder / "t10k-images-idx3-ubyte.gz", test[:N_TEST])
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels[:N_TEST].astype(np.uint8))
    return folder


def recalibrate(args: list[str], ok: bool = True) -> str:
    """`detrigger-guard calibrate --recorded-split` with `args` (the set first); its output."""
    run = CliRunner().invoke(guard_cli, ["calibrate", *args, "--recorded-split"])
    assert (run.exit_code == 0) == ok, run.output
    assert run.exception is None or isinstance(run.exception, SystemExit), run.exception
    return run.output


def calibrated_set(folder: Path, data_dir: Path) -> Path:
    """The tiny set with its validation split recorded and STRIP calibrated the old way (the
    plain quantile, as the shipped sets were before issue 22)."""
    build_model_set(folder, SPEC)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["training"] = {
        "seed": 0,
        "validation_split": {"n": N_VAL, "from": "training data"},
        "target": {"dataset": "mnist"},
    }
    manifest["decision"]["calibration"] = {"target_fpr": 0.05, "split": "validation", "n": N_VAL}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    calibrate_model_set(
        StripOptions(
            model_set=str(folder), dataset="mnist", data_dir=str(data_dir), n=8, bank_size=BANK,
            target_fpr=0.05, confidence=0.0, triggered_images=0, batch_size=16,
        ),
        "test",
    )  # fmt: skip
    return folder


def test_recalibration_changes_only_thresholds_and_records(tmp_path: Path, data_dir: Path):
    folder = calibrated_set(tmp_path / "tinycal", data_dir)
    before = json.loads((folder / "manifest.json").read_text())
    files = file_digests(folder)
    args = [str(folder), "--data-dir", str(data_dir), "--batch-size", "16"]
    out = recalibrate([*args, "--score-floor=-1"])
    assert f"{folder}: STRIP, entropy < " in out and "the service loads it" in out

    after = json.loads((folder / "manifest.json").read_text())
    assert file_digests(folder) == files  # graphs and bank byte for byte
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"decision", "detectors"}
    for entry in (after["decision"], after["detectors"]["strip"]):
        rest = {k: v for k, v in entry.items() if k not in ("threshold", "calibration")}
        old = before["decision"] if entry is after["decision"] else before["detectors"]["strip"]
        assert rest == {k: v for k, v in old.items() if k not in ("threshold", "calibration")}

    # Each record: the confidence, n, k allowed, what it flags of those n, and what it replaced.
    d = after["decision"]["calibration"]
    assert d["confidence"] == 0.95 and d["target_fpr"] == 0.05 and d["n"] == N_VAL
    assert d["allowed_exceedances"] == allowed_exceedances(N_VAL, 0.05, 0.95) < 10
    assert d["false_positive"]["k"] <= d["allowed_exceedances"]
    assert d["previous"] == {"threshold": 0.5, "calibration": before["decision"]["calibration"]}
    s = after["detectors"]["strip"]["calibration"]
    assert s["n"] == N_VAL - BANK and s["confidence"] == 0.95
    assert s["false_positive"]["k"] <= s["allowed_exceedances"] < int(0.05 * s["n"])
    assert s["previous"]["threshold"] == before["detectors"]["strip"]["threshold"]
    b = after["detectors"]["both"]["calibration"]
    assert b["confidence"] == 0.95 and b["false_positive"]["k"] <= b["allowed_exceedances"]
    assert b["previous"]["ae_threshold"] == before["detectors"]["both"]["ae_threshold"]

    # The service loads it, and flags on the calibration images what the record counted.
    ms = ModelSet.load(folder, Settings(models=[folder]))
    labels = 1 + np.arange(N_TRAIN) % 9
    _, calib = bank_and_calibration(_held(), BANK, 0, seed=0)
    x = np.stack([clean_image(SPEC, int(labels[i]), seed=int(i)) for i in calib])
    x = x[:, None].astype(np.float32) / np.float32(255.0)
    assert int(ms.strip_scored(x).decisions.flagged.sum()) == s["false_positive"]["k"]
    assert int(ms.both_scored(x).decisions.flagged.sum()) == b["false_positive"]["k"]

    # Confidence off gives back the plain quantile the first calibration had set.
    recalibrate([*args, "--confidence", "off"])
    again = read_manifest(folder)
    assert again.detectors.strip is not None and again.detectors.both is not None
    old_strip = before["detectors"]["strip"]["threshold"]
    assert again.detectors.strip.threshold == pytest.approx(old_strip)
    assert again.detectors.both.ae_threshold == before["detectors"]["both"]["ae_threshold"]
    assert again.decision.calibration.confidence == 0.0  # type: ignore[union-attr]


def _held() -> np.ndarray:
    from training.data.datasets import split_train_val

    return split_train_val(N_TRAIN, N_VAL, 0)[1]


def test_a_set_without_a_validation_split_or_with_too_few_images_is_refused(
    tmp_path: Path, data_dir: Path
) -> None:
    folder = calibrated_set(tmp_path / "tinycal", data_dir)
    before = (folder / "manifest.json").read_bytes()
    args = [str(folder), "--data-dir", str(data_dir)]
    # 200 images cannot bound 1% at 0.95
    assert "give at least 299" in recalibrate([*args, "--target-fpr", "0.01"], ok=False)
    assert "--confidence" in recalibrate([*args, "--confidence", "1.5"], ok=False)
    # The other mode's options, and neither or both modes, are refused before anything runs.
    assert "--strip-n: only with --data or --redraw-bank" in recalibrate(
        [*args, "--strip-n", "4"], ok=False
    )
    # The recorded split is images the target never trained on: nothing to shift them for.
    assert "--calibration-shift: only with --data" in recalibrate(
        [*args, "--calibration-shift", "1"], ok=False
    )
    run = CliRunner().invoke(guard_cli, ["calibrate", str(folder)])
    assert run.exit_code == 2 and "either --data DIR or --recorded-split" in run.output
    run = CliRunner().invoke(
        guard_cli, ["calibrate", str(folder), "--data", "x", "--dataset=mnist"]
    )
    assert run.exit_code == 2 and "--dataset: only with --recorded-split" in run.output
    manifest = json.loads(before)
    del manifest["training"]["validation_split"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert "no validation split" in recalibrate(args, ok=False)
    (folder / "manifest.json").write_bytes(before)


def test_a_repaired_graph_is_added_and_calibrated_on_the_split(tmp_path: Path, data_dir: Path):
    """--repaired: the graph joins the set as detector repaired, thresholded on the recorded
    split, with detector detrigger_or_repaired (the AE or it) on the same images; the other
    detectors keep their thresholds and records, nothing else of the set changes, and a later
    re-calibration of the whole set keeps the graph and records the thresholds it replaces."""
    folder = calibrated_set(tmp_path / "tinycal", data_dir)
    graph = tmp_path / "unlearned.onnx"
    onnx.save(target_graph(SPEC, repaired=True), graph)
    files = file_digests(folder)
    before = json.loads((folder / "manifest.json").read_text())
    args = [str(folder), "--data-dir", str(data_dir), "--batch-size", "16"]
    out = recalibrate([*args, "--repaired", str(graph)])
    assert f"detectors repaired and detrigger_or_repaired added from {graph}" in out
    assert f"{folder}: repaired graph, prob_drop > " in out
    assert f"{folder}: detector detrigger_or_repaired, prob_drop > " in out
    assert "STRIP" not in out and "de-trigger AE" not in out
    now = json.loads((folder / "manifest.json").read_text())
    assert now["decision"] == before["decision"]
    new = ("repaired", "detrigger_or_repaired")
    assert {k: v for k, v in now["detectors"].items() if k not in new} == before["detectors"]
    fused = read_manifest(folder).detectors.detrigger_or_repaired
    assert fused is not None and fused.calibration is not None
    fcal = fused.calibration
    assert fcal.n == N_VAL and fcal.false_positive is not None
    assert fcal.false_positive.k <= (fcal.allowed_exceedances or 0)
    assert min(fused.ae_threshold, fused.repaired_threshold) >= MIN_THRESHOLD["prob_drop"]
    made_with = (fcal.model_extra or {})["calibrated_with"]
    assert made_with["repaired_sha256"] == now["detectors"]["repaired"]["sha256"]

    spec = read_manifest(folder).detectors.repaired
    assert spec is not None and spec.file == "repaired.onnx" and spec.calibration is not None
    cal = spec.calibration
    assert cal.n == N_VAL and cal.target_fpr == 0.05 and cal.confidence == 0.95
    assert cal.false_positive is not None and cal.false_positive.k <= cal.allowed_exceedances
    assert spec.threshold >= MIN_THRESHOLD["prob_drop"]  # the de-trigger decision's floor
    assert (spec.model_extra or {})["source"]["file"] == str(graph)
    after = file_digests(folder)
    assert after.pop("repaired.onnx") == spec.sha256 and after == files

    ms = ModelSet.load(folder, Settings(models=[folder]))
    clean = clean_image(SPEC, 3, seed=1)
    x = np.stack([clean, add_trigger(clean)])[:, None].astype(np.float32) / np.float32(255.0)
    decisions = ms.repaired_scored(x).decisions
    assert decisions.flagged.tolist() == [False, True]
    assert decisions.detriggered.tolist() == [3, 3]  # type: ignore[union-attr]
    fused_decisions = ms.detrigger_or_repaired_scored(x).decisions
    assert fused_decisions.flagged.tolist() == [False, True]
    assert fused_decisions.detriggered.tolist() == [3, 3]  # type: ignore[union-attr]

    out = recalibrate([*args, "--confidence", "off"])
    assert "repaired graph" in out and "STRIP" in out
    again = json.loads((folder / "manifest.json").read_text())["detectors"]["repaired"]
    assert again["calibration"]["confidence"] == 0.0 and again["sha256"] == spec.sha256
    assert again["calibration"]["previous"]["threshold"] == spec.threshold
    fused_again = json.loads((folder / "manifest.json").read_text())["detectors"][
        "detrigger_or_repaired"
    ]
    assert fused_again["calibration"]["previous"]["ae_threshold"] == fused.ae_threshold


def test_a_repaired_graph_that_does_not_fit_leaves_the_set_as_it_was(
    tmp_path: Path, data_dir: Path
):
    folder = calibrated_set(tmp_path / "tinycal", data_dir)
    before = (folder / "manifest.json").read_bytes()
    graph = tmp_path / "five_classes.onnx"
    onnx.save(target_graph(TinySpec(classes=5), repaired=True), graph)
    args = [str(folder), "--data-dir", str(data_dir), "--repaired", str(graph)]
    out = recalibrate(args, ok=False)
    assert f"--repaired {graph}: output 'logits' has shape (2, 5) for 2 images" in out
    assert (folder / "manifest.json").read_bytes() == before
    assert not (folder / "repaired.onnx").exists()
    rgb = tmp_path / "rgb.onnx"  # a classifier of 32x32 colour images
    onnx.save(target_graph(TinySpec(height=32, width=32, channels=3), repaired=True), rgb)
    out = recalibrate([str(folder), "--data-dir", str(data_dir), "--repaired", str(rgb)], ok=False)
    assert f"--repaired {rgb}: fails on two float32 images of shape (1, 28, 28)" in out
    assert (folder / "manifest.json").read_bytes() == before
    for flags, words in (
        (["--redraw-bank", "--repaired", str(graph)], "--repaired: not with --redraw-bank"),
        (["--repaired-score", "kl"], "--repaired-score: only with --repaired"),
    ):
        refused = CliRunner().invoke(
            guard_cli, ["calibrate", str(folder), "--recorded-split", *flags]
        )
        assert refused.exit_code == 2 and words in refused.output
