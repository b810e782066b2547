"""STRIP calibration (training/evaluation/strip.py): the threshold maths on hand-made entropies,
the validation split, and `detrigger-guard calibrate SET --recorded-split --redraw-bank` end to
end on a tiny model set and a tiny IDX dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from contract.modes import Detector
from contract.strip import flag
from service.runtime.modelset import ModelSet
from service.settings import Settings
from tests.support.tiny_models import TinySpec, add_trigger, build_model_set, clean_image
from tests.training.conftest import write_idx
from tests.training.test_recalibrate import recalibrate
from training.data.datasets import split_train_val
from training.evaluation.metrics import allowed_exceedances
from training.evaluation.strip import (
    StripOptions,
    bank_and_calibration,
    calibrate_model_set,
    quantiles,
    strip_threshold,
    validation_indices,
)


# --- the threshold ----------------------------------------------------------------------------
@pytest.mark.parametrize("fpr, flagged", [(0.01, 1), (0.05, 5), (0.10, 10), (0.005, 0)])
def test_threshold_flags_exactly_the_requested_share_of_distinct_entropies(
    fpr: float, flagged: int
) -> None:
    entropies = np.random.default_rng(0).permutation(np.arange(1, 101) / 50.0)  # 100 distinct
    t = strip_threshold(entropies, fpr)
    assert int(flag(entropies, t).sum()) == flagged
    assert t == pytest.approx((flagged + 1) / 50.0)  # the (k + 1)-th smallest: k lie below


def test_threshold_never_exceeds_the_fpr_with_ties() -> None:
    entropies = np.array([0.2] * 5 + [0.5] * 95)
    t = strip_threshold(entropies, 0.03)  # 3 may be flagged; the 5 tied lowest cannot be split
    assert flag(entropies, t).mean() <= 0.03
    with pytest.raises(ValueError):
        strip_threshold(entropies, 0.0)


# --- the split --------------------------------------------------------------------------------
def test_the_validation_split_is_the_one_the_target_never_trained_on() -> None:
    manifest = {"training": {"seed": 3, "validation_split": {"n": 40}}}
    val, note = validation_indices(200, manifest, val_size=10, seed=0)
    train, held = split_train_val(200, 40, 3)
    np.testing.assert_array_equal(val, held)
    assert note.startswith("validation") and not set(val) & set(train)
    # No split recorded: a seeded subset of the requested size, and the note says so.
    other, note = validation_indices(200, {}, val_size=25, seed=0)
    assert len(other) == 25 and "records no validation split" in note


def test_bank_and_calibration_images_are_disjoint_validation_images() -> None:
    val = np.arange(100, 200)
    bank, calib = bank_and_calibration(val, 16, 0, seed=0)
    assert len(bank) == 16 and len(calib) == 84
    assert not set(bank) & set(calib) and set(bank) | set(calib) == set(val)
    _, few = bank_and_calibration(val, 16, 30, seed=0)
    assert len(few) == 30 and set(few) <= set(calib)


# --- the command ------------------------------------------------------------------------------
SPEC = TinySpec(name="tinycal")


def redraw(model_set: Path, data_dir: Path, *args: str, ok: bool = True) -> str:
    """The command, on the tiny set and data; its output."""
    base = [str(model_set), "--redraw-bank", "--dataset", "mnist", "--data-dir", str(data_dir)]
    return recalibrate([*base, *args], ok=ok)


def calibrate(model_set: Path, data_dir: Path, **fields) -> dict:
    """The library call the command, make reproduce and the audit make; its summary."""
    opts = StripOptions(model_set=str(model_set), dataset="mnist", data_dir=str(data_dir), **fields)
    return calibrate_model_set(opts, "test")


N_TRAIN, N_VAL = 400, 200


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A tiny MNIST-style dataset of the tiny set's clean images, classes 1..9."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    labels = 1 + np.arange(N_TRAIN) % 9
    images = np.stack([clean_image(SPEC, int(k), seed=i) for i, k in enumerate(labels)])
    for prefix, count in (("train", N_TRAIN), ("t10k", 20)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images[:count])
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels[:count].astype(np.uint8))
    return folder


@pytest.fixture
def model_set(tmp_path: Path) -> Path:
    folder = build_model_set(tmp_path / "tinycal", SPEC)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["training"] = {"seed": 0, "validation_split": {"n": N_VAL, "from": "training data"}}
    manifest["detectors"] = {"other": {"kept": True}}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def test_calibration_writes_a_bank_the_service_loads_and_keeps_the_rest(
    model_set: Path, data_dir: Path
) -> None:
    before = json.loads((model_set / "manifest.json").read_text())
    redraw(model_set, data_dir, "--strip-n", "8", "--strip-bank", "27", "--target-fpr", "0.05",
           "--batch-size", "16")  # fmt: skip

    after = json.loads((model_set / "manifest.json").read_text())
    strip = after["detectors"].pop("strip")
    both = after["detectors"].pop("both")
    assert after == before  # every other field, other detectors included, is untouched
    assert strip["n"] == 8
    cal = strip["calibration"]
    assert cal["split"] == "validation" and cal["n"] == N_VAL - 27 and cal["target_fpr"] == 0.05
    assert cal["false_positive_rate"] <= 0.05 and cal["clean_accuracy"] == 1.0
    assert cal["command"].startswith("detrigger-guard")  # under pytest: its argv after it
    # The bank: 27 validation images (never trained on), saved as uint8.
    _, held = split_train_val(N_TRAIN, N_VAL, 0)
    assert len(strip["bank"]["indices"]) == 27 and set(strip["bank"]["indices"]) <= set(held)
    bank = np.load(model_set / "strip_bank.npy")
    assert bank.shape == (27, 1, 28, 28) and bank.dtype == np.uint8
    # The set's own trigger, stamped on validation images: it works, and STRIP flags it.
    (triggered,) = cal["triggered"]
    assert triggered["attack_success_rate"] == 1.0 and triggered["detection_rate"] == 1.0
    assert triggered["entropy_bits"]["max"] < strip["threshold"]

    # The service loads it and computes the same entropies on the same images (one
    # implementation), so its FPR on them is the calibration's; triggered images are flagged.
    ms = ModelSet.load(model_set, Settings(models=[model_set]))
    assert Detector.strip in ms.detectors
    bank_idx, calib_idx = bank_and_calibration(held, 27, 0, seed=0)
    np.testing.assert_array_equal(bank_idx, strip["bank"]["indices"])
    labels = 1 + np.arange(N_TRAIN) % 9
    x = np.stack([clean_image(SPEC, int(labels[i]), seed=int(i)) for i in calib_idx])  # the data
    d = ms.strip_scored(x[:, None].astype(np.float32) / np.float32(255.0)).decisions
    assert quantiles(d.score) == pytest.approx(cal["entropy_bits"], abs=1e-6)
    assert float(d.flagged.mean()) == pytest.approx(cal["false_positive_rate"])
    t = np.stack([add_trigger(clean_image(SPEC, k, seed=500 + k)) for k in range(1, 10)])
    t_flagged = ms.strip_scored(t[:, None].astype(np.float32) / np.float32(255.0)).decisions
    assert t_flagged.flagged.all()

    # Detector both, calibrated on the same images for the same FPR: the service's fused
    # decisions flag exactly what the calibration counted, and the triggered images.
    assert both["rule"] == "either"
    fp = both["calibration"]["false_positive"]
    assert fp["n"] == N_VAL - 27 and fp["rate"] <= 0.05
    assert both["calibration"]["calibrated_with"]["strip_bank_sha256"] == strip["bank"]["sha256"]
    assert Detector.both in ms.detectors
    fused = ms.both_scored(x[:, None].astype(np.float32) / np.float32(255.0)).decisions
    assert int(fused.flagged.sum()) == fp["k"]
    np.testing.assert_allclose(fused.entropy, d.score)
    assert ms.both_scored(t[:, None].astype(np.float32) / np.float32(255.0)).decisions.flagged.all()

    # Re-calibrated on its recorded split for the same FPR (detrigger-guard calibrate
    # --recorded-split), the set draws the same images again and gets the same fused thresholds.
    recalibrate([str(model_set), "--dataset", "mnist", "--data-dir", str(data_dir),
                 "--target-fpr", "0.05", "--batch-size", "16"])  # fmt: skip
    again = json.loads((model_set / "manifest.json").read_text())["detectors"]["both"]
    assert again["ae_threshold"] == both["ae_threshold"]
    assert again["strip_threshold"] == both["strip_threshold"]
    assert again["calibration"]["false_positive"] == fp


def test_calibration_is_deterministic(model_set: Path, data_dir: Path) -> None:
    fields = {"n": 4, "bank_size": 16, "calibration_images": 100, "triggered_images": 0}
    first = calibrate(model_set, data_dir, target_fpr=0.05, **fields)
    bank = (model_set / "strip_bank.npy").read_bytes()
    second = calibrate(model_set, data_dir, target_fpr=0.05, **fields)
    assert second["threshold"] == first["threshold"]
    assert second["entropy_bits"] == first["entropy_bits"]
    assert (model_set / "strip_bank.npy").read_bytes() == bank
    assert "triggered" not in second


def test_bad_choices_are_refused(model_set: Path, data_dir: Path) -> None:
    before = (model_set / "manifest.json").read_bytes()
    out = redraw(model_set, data_dir, "--strip-n", "65", "--strip-bank", "64", ok=False)
    assert "--n 65 must lie in 1..256 and be at most --bank-size (64)" in out
    # 136 calibration images cannot measure 0.1%
    assert "give at least" in redraw(model_set, data_dir, "--target-fpr", "0.001", ok=False)
    assert "--confidence" in redraw(model_set, data_dir, "--confidence", "1", ok=False)
    # The bank's options belong to --redraw-bank; the split's mode without it refuses them.
    out = recalibrate([str(model_set), "--strip-bank", "8", "--dataset", "mnist"], ok=False)
    assert "--strip-bank: only with --data or --redraw-bank" in out
    assert (model_set / "manifest.json").read_bytes() == before


def test_the_default_confidence_lets_fewer_images_past_and_says_so(
    model_set: Path, data_dir: Path
) -> None:
    """Issue 22: at confidence 0.95 (the default) the threshold lets at most k of the n images
    past, k the largest with BinomCDF(k; n, fpr) <= 0.05, fewer than the plain quantile's;
    too few images for any such k are refused with the count needed."""
    base = {"n": 8, "bank_size": 27, "triggered_images": 0, "batch_size": 16}
    plain = calibrate(model_set, data_dir, target_fpr=0.1, confidence=0.0, **base)
    assert plain["confidence"] == 0.0 and plain["allowed_exceedances"] == 17  # floor(0.1 * 173)
    confident = calibrate(model_set, data_dir, target_fpr=0.1, **base)
    assert confident["confidence"] == 0.95 and confident["n"] == N_VAL - 27
    assert confident["allowed_exceedances"] == allowed_exceedances(N_VAL - 27, 0.1, 0.95) < 17
    assert confident["false_positive"]["k"] <= confident["allowed_exceedances"]
    assert confident["threshold"] <= plain["threshold"]  # flagged below: a lower threshold
    both = json.loads((model_set / "manifest.json").read_text())["detectors"]["both"]
    assert both["calibration"]["confidence"] == 0.95
    assert both["calibration"]["false_positive"]["k"] <= confident["allowed_exceedances"]
    with pytest.raises(ValueError, match="give at least 299"):
        calibrate(model_set, data_dir, target_fpr=0.01, **base)  # 173 images
