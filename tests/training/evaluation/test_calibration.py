"""The calibration of a user's set: exact intervals, the contract's rule at the target FPR."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from contract.scoring import decide
from training.evaluation import calibration
from training.evaluation.calibration import calibrate_decision, clopper_pearson


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [(0, 100, 0.0, 0.036217), (5, 100, 0.016432, 0.112835), (100, 100, 0.963783, 1.0)],
)
def test_clopper_pearson_gives_the_exact_bounds(monkeypatch, k, n, lo, hi) -> None:
    got = clopper_pearson(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-5)
    # The bisection without scipy gives the same bounds.
    monkeypatch.setitem(__import__("sys").modules, "scipy", None)
    monkeypatch.setitem(__import__("sys").modules, "scipy.stats", None)
    assert calibration.clopper_pearson(k, n) == pytest.approx((lo, hi), abs=1e-5)


def test_the_threshold_flags_at_most_the_target_fpr_by_the_contracts_rule() -> None:
    rng = np.random.default_rng(0)
    lx = rng.normal(size=(1000, 5)) * 3
    lae = lx + rng.normal(size=(1000, 5))
    decision, measured = calibrate_decision(lx, lae, "prob_drop", 0.01, confidence=0.0)
    flagged = decide(lx, lae, decision).flagged
    assert decision.rule == "score" and 0 < flagged.sum() <= 10
    assert measured["false_positive"]["k"] == int(flagged.sum())
    lo, hi = measured["false_positive"]["ci95"]
    assert lo <= flagged.mean() <= hi
    with pytest.raises(ValueError, match="at least 100"):
        calibrate_decision(lx[:50], lae[:50], "prob_drop", 0.01, confidence=0.0)


def test_the_default_calibration_holds_with_95_percent_confidence_and_says_so() -> None:
    """Issue 22: by default at most k of the n images pass, k the largest count with
    BinomCDF(k; n, target) <= 0.05 (4 of 1000 at 1%, where the plain quantile lets 10 pass);
    the record says so; too few images are refused with the count needed."""
    rng = np.random.default_rng(0)
    lx = rng.normal(size=(1000, 5)) * 3
    lae = lx + rng.normal(size=(1000, 5))
    decision, measured = calibrate_decision(lx, lae, "prob_drop", 0.01)
    flagged = decide(lx, lae, decision).flagged
    assert measured["confidence"] == 0.95 and measured["n"] == 1000
    assert measured["allowed_exceedances"] == 4 and int(flagged.sum()) == 4
    assert measured["false_positive"]["k"] == 4 and "floor" not in measured
    with pytest.raises(ValueError, match="give at least 299"):
        calibrate_decision(lx[:298], lae[:298], "prob_drop", 0.01)
    # A floor above the calibrated threshold decides, and the record keeps both.
    floored, m = calibrate_decision(lx, lae, "prob_drop", 0.01, floor=0.99)
    assert floored.threshold == 0.99 and m["floor"]["calibrated"] == decision.threshold


def test_the_estimates_draw_their_images_across_a_folder_read_class_by_class(
    tmp_path, monkeypatch
) -> None:
    """A folder read class by class gives sorted images; the estimate images must still be a
    random draw, not the first class."""
    seen = []

    def record(images, run_pair, decision, batch_size):
        seen.append(images)
        return {}

    monkeypatch.setattr(calibration, "estimates", record)
    monkeypatch.setattr(calibration, "onnx_pair", lambda *a: None)
    monkeypatch.setattr(calibration, "read_manifest", lambda folder: _Manifest())
    monkeypatch.setattr(
        calibration, "_batched", lambda pair, x, b: (np.eye(5)[np.arange(len(x)) % 5],) * 2 + (x,)
    )
    (tmp_path / "manifest.json").write_text("{}")
    monkeypatch.setattr(calibration, "write_manifest", lambda *a: None)
    monkeypatch.setattr(calibration.Manifest, "model_validate", staticmethod(lambda raw: raw))
    images = np.repeat(np.arange(4, dtype=np.uint8), 100)[:, None, None, None]  # classes 0..3
    opts = calibration.CalibrationOptions(
        strip=False, estimate_images=100, target_fpr=0.05, shift=0
    )
    calibration.calibrate_folder(tmp_path, images.repeat(2, 2).repeat(2, 3), opts, "test")
    assert len(set(seen[0][:, 0, 0, 0].tolist())) == 4


class _Manifest:
    class input:  # noqa: N801
        channels, height, width = 1, 2, 2

    class detectors:  # noqa: N801
        repaired = None


def test_shifted_moves_each_image_by_its_own_offset_of_at_most_the_pixels_given() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (200, 3, 7, 9), dtype=np.uint8)
    out = calibration.shifted(images, 2, seed=0)
    assert out.shape == images.shape and out.dtype == np.uint8
    padded = np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    offsets = []
    for i in range(len(images)):
        found = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if np.array_equal(out[i], padded[i, :, dy : dy + 7, dx : dx + 9])
        ]
        assert found, f"image {i} is no shifted copy of its original"
        offsets.append(found[0])
    assert len(set(offsets)) == 25  # every offset of the 5 x 5 is drawn
    assert np.array_equal(out, calibration.shifted(images, 2, seed=0))  # the seed fixes them
    assert calibration.shifted(images, 0, seed=0) is images
    with pytest.raises(ValueError, match="smaller than the image"):
        calibration.shifted(images, 7, seed=0)


def test_thresholds_are_set_on_shifted_images_and_the_unshifted_rate_is_recorded(
    tmp_path, monkeypatch
) -> None:
    """A target that is surer of the exact images it trained on than of any others: their AE
    drop is small, so a threshold set on them as they are lies below most new images' scores;
    set on the shifted copies, it lies above every original's."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (400, 1, 6, 6), dtype=np.uint8)
    seen = {im.tobytes() for im in images}

    def pair(x):  # (f(x), f(AE x), AE x): the drop is 0.05 on seen images, 0.2-0.4 on others
        known = np.array([(np.rint(im * 255).astype(np.uint8)).tobytes() in seen for im in x])
        drop = np.where(known, 0.05, rng.uniform(0.2, 0.4, len(x)))
        lx = np.log(np.stack([np.full(len(x), 0.9), np.full(len(x), 0.1)], 1))
        lae = np.log(np.stack([0.9 - drop, 0.1 + drop], 1))
        return lx, lae, x

    monkeypatch.setattr(calibration, "onnx_pair", lambda *a: pair)
    monkeypatch.setattr(calibration, "read_manifest", lambda folder: _Manifest6())
    (tmp_path / "manifest.json").write_text("{}")
    monkeypatch.setattr(calibration, "write_manifest", lambda *a: None)
    monkeypatch.setattr(calibration.Manifest, "model_validate", staticmethod(lambda raw: raw))
    opts = calibration.CalibrationOptions(strip=False, estimate_images=0, target_fpr=0.05)
    plain = calibration.calibrate_folder(tmp_path, images, replace(opts, shift=0), "test")
    moved = calibration.calibrate_folder(tmp_path, images, opts, "test")["decision"]
    assert plain["decision"]["threshold"] == pytest.approx(0.05) and "shift" not in plain
    assert moved["threshold"] > 0.2 and moved["shift"]["pixels"] == 2
    assert moved["shift"]["false_positive_unshifted"]["k"] == 0
    assert moved["source"] == "test, each image shifted by up to 2 px"


class _Manifest6(_Manifest):
    class input:  # noqa: N801
        channels, height, width = 1, 6, 6


class _RepairedSpec:
    score = "prob_drop"


class _ManifestRepaired(_Manifest6):
    class detectors:  # noqa: N801
        repaired = _RepairedSpec()


def test_the_repaired_graph_is_calibrated_on_the_images_as_they_are(tmp_path, monkeypatch) -> None:
    """A target that is sure of every image as it is and unsure of it shifted, beside a repaired
    copy (fit's twin, trained on shifted images) that is sure of both: on the shifted copies the
    two disagree by 0.6, which says nothing of the backdoor; on the images as they are by 0.01.
    The de-trigger threshold is still set on the shifted copies, the repaired one on the
    images as they are, and the fused detector pairs each part's score the same way."""
    images = np.random.default_rng(0).integers(0, 256, (400, 1, 6, 6), dtype=np.uint8)
    seen = {im.tobytes() for im in images}

    def known(x):
        return np.array([(np.rint(im * 255).astype(np.uint8)).tobytes() in seen for im in x])

    def sure(p):
        return np.log(np.stack([p, 1 - p], 1))

    def pair(x):  # the target: 0.99 on an image as it is, 0.39 shifted; the AE drops it 0.05
        p = np.where(known(x), 0.99, 0.39)
        return sure(p), sure(p - 0.05), x

    def repaired(folder, manifest, batches, threads):  # 0.98 on every image
        return np.concatenate([sure(np.full(len(x), 0.98)) for x in batches])

    raw = {
        "decision": {"score": "prob_drop"},
        "target": {"sha256": "t"},
        "detrigger": {"sha256": "d"},
        "detectors": {"repaired": {"score": "prob_drop", "threshold": 1.0, "sha256": "r"}},
    }
    written = {}
    monkeypatch.setattr(calibration, "onnx_pair", lambda *a: pair)
    monkeypatch.setattr(calibration, "repaired_logits", repaired)
    monkeypatch.setattr(calibration, "read_manifest", lambda folder: _ManifestRepaired())
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    monkeypatch.setattr(calibration, "write_manifest", lambda folder, r: written.update(r))
    monkeypatch.setattr(calibration.Manifest, "model_validate", staticmethod(lambda r: r))
    opts = calibration.CalibrationOptions(strip=False, estimate_images=0, target_fpr=0.05)
    result = calibration.calibrate_folder(tmp_path, images, opts, "test")
    moved_share = (calibration.shifted(images, 2, 0) != images).any((1, 2, 3)).mean()
    assert moved_share > 0.9  # most images moved: a threshold set on them would be 0.6
    assert result["repaired"]["threshold"] == pytest.approx(0.01, abs=1e-6)
    assert result["repaired"]["source"] == "test"  # no shift
    assert written["detectors"]["repaired"]["threshold"] == pytest.approx(0.01, abs=1e-6)
    fused = written["detectors"]["detrigger_or_repaired"]
    assert fused["repaired_threshold"] < 0.02  # the repaired part, as it is
    assert "the repaired graph's on it as it is" in fused["calibration"]["source"]
    assert result["decision"]["source"] == "test, each image shifted by up to 2 px"
