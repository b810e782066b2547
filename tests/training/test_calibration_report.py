"""The report of a set's thresholds before and after a re-calibration, on the test split
(training/calibration_report.py), end to end on a tiny model set in a tiny git repository
(issue 22)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from contract.manifest import read_manifest
from tests.training.test_recalibrate import BANK, N_TEST, N_VAL, calibrated_set, recalibrate
from tests.training.test_recalibrate import data_dir as data_dir  # the fixture
from training.calibration_report import main as report_main


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c",
         "core.hooksPath=/dev/null", *args],
        cwd=repo, check=True, capture_output=True,
    )  # fmt: skip


def test_the_report_measures_both_thresholds_on_the_test_split(
    tmp_path: Path, data_dir: Path
) -> None:
    repo = tmp_path / "repo"
    folder = calibrated_set(repo / "models" / "tinycal", data_dir)
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "tiny set")
    recalibrate([str(folder), "--data-dir", str(data_dir), "--score-floor=-1"])
    out = tmp_path / "report"
    report = report_main(
        ["--model-set", str(folder), "--baseline", "HEAD", "--data-dir", str(data_dir),
         "--batch-size", "16", "--out", str(out)]
    )  # fmt: skip

    (s,) = report["sets"]
    assert s["split"] == "test" and s["clean_images"] == N_TEST
    before, after = s["thresholds"]["before"], s["thresholds"]["after"]
    manifest = read_manifest(folder)
    assert manifest.detectors.strip is not None
    assert after["rules"]["strip"] == f"entropy < {manifest.detectors.strip.threshold:.4g} bits"
    assert before["rules"] != after["rules"]
    for t in (before, after):
        for d in ("detrigger", "strip", "both"):
            fp = t["detectors"][d]["false_positive"]
            assert fp["n"] == N_TEST and fp["ci95"][0] <= fp["rate"] <= fp["ci95"][1]
            (tp,) = t["detectors"][d]["detection"]
            assert tp["n"] == N_TEST and tp["rate"] == 1.0  # the trigger always changes class
    # What the records say: the old STRIP record's share read back as k of n, the new one's.
    old_strip = before["detectors"]["strip"]["calibration"]
    assert old_strip["confidence"] == 0.0 and old_strip["false_positive"]["n"] == N_VAL - BANK
    new = after["detectors"]["strip"]["calibration"]
    assert new["confidence"] == 0.95
    assert new["allowed_exceedances"] < old_strip["allowed_exceedances"]
    # The new STRIP flags no more test images than the old (a lower entropy threshold).
    k = [t["detectors"]["strip"]["false_positive"]["k"] for t in (before, after)]
    assert k[1] <= k[0]
    text = (out / "README.md").read_text()
    assert "| tinycal | strip | after |" in text and "c=0.95" in text
    assert json.loads((out / "calibration.json").read_text())["baseline"] == report["baseline"]
    counts = {r["n"]: r["0.01"]["allowed_exceedances"] for r in report["image_counts"]["rows"]}
    assert counts[300] == 0 and counts[5000] == 38
    # Without a baseline (e.g. after an AE swap, when no earlier manifest shares the graphs): the
    # thresholds now only, the same numbers.
    alone = report_main(
        ["--model-set", str(folder), "--data-dir", str(data_dir), "--batch-size", "16",
         "--out", str(tmp_path / "alone")]
    )  # fmt: skip
    assert alone["baseline"] is None and list(alone["sets"][0]["thresholds"]) == ["after"]
    assert alone["sets"][0]["thresholds"]["after"] == after
    text = (tmp_path / "alone" / "README.md").read_text()
    assert "| tinycal | strip | now |" in text and "| before |" not in text
    # Other graphs at the baseline: one pass cannot serve both, and the report says why.
    (folder / "detrigger.onnx").write_bytes(b"x")
    manifest_raw = json.loads((folder / "manifest.json").read_text())
    manifest_raw["detrigger"]["sha256"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest_raw))
    with pytest.raises(SystemExit, match="detrigger.sha256"):
        report_main(["--model-set", str(folder), "--baseline", "HEAD", "--out", str(out),
                     "--data-dir", str(data_dir)])  # fmt: skip
