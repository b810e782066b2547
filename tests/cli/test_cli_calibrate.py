"""`detrigger-guard calibrate`: re-threshold an existing set on new clean images, atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner

from cli.main import main
from contract.modes import Detector
from service.runtime.modelset import ModelSet
from service.settings import Settings
from tests.support import user_models as um
from tests.support.tiny_models import TinySpec, build_model_set, clean_image, target_graph


def test_calibrate_rewrites_the_threshold_and_the_strip_bank(tmp_path: Path) -> None:
    folder = build_model_set(tmp_path / "tiny", TinySpec(name="tiny"))
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, (300, 1, 28, 28)).astype(np.float32)
    um.write_pngs(tmp_path / "clean", x)
    (tmp_path / "clean" / "junk.png").write_text("no image")
    result = CliRunner().invoke(
        main,
        ["calibrate", str(folder), "--data", str(tmp_path / "clean"), "--target-fpr", "0.02",
         "--strip-bank", "16", "--strip-n", "8", "--estimate-images", "50"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "300 images; skipped 1 files (1 unreadable)" in result.output
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["decision"]["rule"] == "score"
    calibration = manifest["decision"]["calibration"]
    fp = calibration["false_positive"]
    assert fp["n"] == 300 - 16 and fp["rate"] <= 0.02
    # The default confidence 0.95: 1 of the 284 images may pass (the plain quantile: 5).
    assert calibration["confidence"] == 0.95 and calibration["allowed_exceedances"] == 1
    assert fp["k"] <= 1 and "at most 1 of 284 allowed (confidence 0.95)" in result.output
    assert fp["ci95"][0] <= fp["rate"] <= fp["ci95"][1]
    # Set on the images each shifted by up to 2 px (the default); the same images as they are
    # are measured too.
    assert calibration["shift"]["pixels"] == 2
    assert calibration["shift"]["false_positive_unshifted"]["n"] == 300 - 16
    assert "on the images shifted by up to 2 px (as they are: " in result.output
    model_set = ModelSet.load(folder, Settings(models=[folder]))
    assert model_set.strip is not None and len(model_set.strip.bank) == 16
    # Detector both, on the same images for the same FPR.
    both = manifest["detectors"]["both"]
    assert Detector.both in model_set.detectors and both["calibration"]["target_fpr"] == 0.02
    assert both["calibration"]["false_positive"]["n"] == 300 - 16
    assert both["calibration"]["false_positive"]["rate"] <= 0.02
    assert result.output.strip().splitlines()[-1] == f"detrigger-guard serve {folder}"


def test_calibrate_with_too_few_images_leaves_the_set_as_it_was(tmp_path: Path) -> None:
    folder = build_model_set(tmp_path / "tiny", TinySpec(name="tiny"))
    before = (folder / "manifest.json").read_bytes()
    um.write_pngs(tmp_path / "clean", np.zeros((20, 1, 28, 28), np.float32) + 0.5)
    result = CliRunner().invoke(
        main,
        [
            "calibrate",
            str(folder),
            "--data",
            str(tmp_path / "clean"),
            "--strip-bank",
            "8",
            "--strip-n",
            "4",
        ],  # fmt: skip
    )
    # 12 images: far from the 299 that bound a 1% FPR at the default confidence 0.95
    assert result.exit_code != 0 and "give at least 299" in result.output
    assert (folder / "manifest.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_calibrate_takes_a_confidence_or_off(tmp_path: Path) -> None:
    folder = build_model_set(tmp_path / "tiny", TinySpec(name="tiny"))
    um.write_pngs(tmp_path / "clean", np.random.default_rng(1).uniform(0, 1, (120, 1, 28, 28)))
    base = ["calibrate", str(folder), "--data", str(tmp_path / "clean"), "--target-fpr", "0.05"]
    base += ["--no-strip", "--estimate-images", "0"]
    bad = CliRunner().invoke(main, [*base, "--confidence", "1.2"])
    assert bad.exit_code == 2 and "must lie in [0, 1)" in bad.output
    result = CliRunner().invoke(main, [*base, "--confidence", "off"])
    assert result.exit_code == 0, result.output
    calibration = json.loads((folder / "manifest.json").read_text())["decision"]["calibration"]
    assert calibration["confidence"] == 0.0 and calibration["allowed_exceedances"] == 6
    result = CliRunner().invoke(main, [*base, "--confidence", "0.9"])
    assert result.exit_code == 0, result.output
    calibration = json.loads((folder / "manifest.json").read_text())["decision"]["calibration"]
    assert calibration["confidence"] == 0.9 and calibration["allowed_exceedances"] == 2


def test_calibrate_gates_the_ae_first_when_asked(tmp_path: Path) -> None:
    """--unchanged-tolerance: the AE graph gains the gate (contract/unchanged.py), the manifest
    records it, and the thresholds are calibrated on the gated graph; --redraw-bank, which
    keeps the de-trigger decision, refuses it."""
    folder = build_model_set(tmp_path / "tiny", TinySpec(name="tiny"))
    spec = TinySpec(name="tiny")
    x = np.stack([clean_image(spec, 1 + i % 9, seed=i) for i in range(120)])[:, None]
    x = x.astype(np.float32) / 255.0
    um.write_pngs(tmp_path / "clean", x)
    base = ["calibrate", str(folder), "--data", str(tmp_path / "clean"), "--target-fpr", "0.05"]
    base += ["--no-strip", "--estimate-images", "40"]
    result = CliRunner().invoke(main, [*base, "--unchanged-tolerance", "0.1"])
    assert result.exit_code == 0, result.output
    assert "AE gated at unchanged tolerance 0.1" in result.output
    entry = json.loads((folder / "manifest.json").read_text())["detrigger"]
    assert entry["unchanged_tolerance"] == 0.1 and entry["gate"]["tolerance"] == 0.1
    model_set = ModelSet.load(folder, Settings(models=[folder]))
    scored = model_set.infer_scored(x[:4])
    assert scored.images_ae is not None and np.array_equal(scored.images_ae, x[:4])  # unchanged
    # The estimates say so: clean images come back bit for bit, the white corner never does.
    estimates = json.loads((folder / "report.json").read_text())["calibration"]["estimates"]
    assert estimates["clean"]["unchanged"] == 1.0
    white = next(t for t in estimates["triggers"] if t["name"] == "badnets-white")
    assert white["unchanged"] == 0.0
    # ... and say how much room a gate has: the AE moves the white corner by 1, clean images
    # (gated) not at all
    assert white["smallest_largest_change"] == 1.0
    assert estimates["clean"]["median_largest_change"] == 0.0
    assert "| smallest change |" in (folder / "report.md").read_text()
    refused = CliRunner().invoke(
        main, ["calibrate", str(folder), "--recorded-split", "--redraw-bank",
               "--unchanged-tolerance", "0.1"],
    )  # fmt: skip
    assert refused.exit_code == 2 and "not with --redraw-bank" in refused.output


def test_calibrate_adds_a_repaired_graph_on_new_images(tmp_path: Path) -> None:
    """--data --repaired: the repaired graph joins the set and is thresholded on the same clean
    images as the de-trigger decision; when the calibration cannot run, the set is left as it
    was, without the graph."""
    spec = TinySpec(name="tiny")
    folder = build_model_set(tmp_path / "tiny", spec)
    graph = tmp_path / "unlearned.onnx"
    onnx.save(target_graph(spec, repaired=True), graph)
    x = np.stack([clean_image(spec, 1 + i % 9, seed=i) for i in range(120)])[:, None]
    um.write_pngs(tmp_path / "clean", x.astype(np.float32) / 255.0)
    base = ["calibrate", str(folder), "--data", str(tmp_path / "clean"), "--target-fpr", "0.05"]
    base += ["--no-strip", "--estimate-images", "0", "--repaired", str(graph)]

    before = (folder / "manifest.json").read_bytes()
    few = CliRunner().invoke(main, [*base, "--target-fpr", "0.001"])
    assert few.exit_code != 0 and "give at least" in few.output
    assert (folder / "manifest.json").read_bytes() == before
    assert not (folder / "repaired.onnx").exists()

    result = CliRunner().invoke(main, base)
    assert result.exit_code == 0, result.output
    assert f"detectors repaired and detrigger_or_repaired added from {graph}" in result.output
    assert "; repaired (prob_drop > " in result.output
    assert "; detrigger_or_repaired (each part at " in result.output
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = manifest["detectors"]["repaired"]
    assert entry["calibration"]["n"] == manifest["decision"]["calibration"]["n"] == 120
    assert (
        entry["calibration"]["false_positive"]["k"] <= entry["calibration"]["allowed_exceedances"]
    )
    fused = manifest["detectors"]["detrigger_or_repaired"]
    assert fused["calibration"]["n"] == 120 and fused["calibration"]["source"]
    model_set = ModelSet.load(folder, Settings(models=[folder]))
    assert model_set.detectors == (
        Detector.detrigger,
        Detector.repaired,
        Detector.detrigger_or_repaired,
    )
