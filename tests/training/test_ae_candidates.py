"""The AE comparison of issue 20 (training/ae_candidates.py) on the tiny generated set: its own
patch-masking AE removes the tiny trigger (everything detected), the identity AE removes nothing,
so the rule passes a copy of the masking AE and fails the identity AE by 100 points; every speed
cell is measured and the ratios follow from the medians."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.tiny_models import build_model_set
from tests.training.test_detection_report import SPEC, identity_ae, with_training, write_data
from training.ae_candidates import main


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("candidates")
    data_dir = write_data(root / "mnist")
    tiny = with_training(build_model_set(root / "tiny", SPEC))
    copy = shutil.copy(tiny / "detrigger.onnx", root / "masking-copy.onnx")
    report = main(
        ["--dataset", "mnist", "--data-dir", str(data_dir), "--shipped", str(tiny)]
        + ["--sets", str(tiny), "--ae", f"own={tiny / 'detrigger.onnx'}"]
        + ["--ae", f"copy={copy}", "--ae", f"identity={identity_ae(root / 'id.onnx')}"]
        + ["--target-fpr", "0.05", "--seconds", "0.01", "--rounds", "2", "--batch-size", "16"]
        + ["--out", str(root / "out")]
    )
    return report, root / "out"


def test_rule_passes_an_equal_ae_and_fails_one_that_removes_nothing(run: tuple) -> None:
    report, _ = run
    assert report["baseline"] == "own"
    (entry,) = report["sets"]
    assert entry["attack"] == "badnets-white" and entry["attack_success_rate"] == 1.0
    assert entry["aes"]["own"]["kl"]["detection_rate"] == 1.0
    assert entry["aes"]["identity"]["kl"]["detection_rate"] == 0.0
    for label in ("own", "copy", "identity"):
        assert entry["aes"][label]["kl"]["validation_false_positive_rate"] <= 0.05
    assert report["verdicts"]["copy"]["passes"] is True
    identity = report["verdicts"]["identity"]
    assert identity["passes"] is False
    assert identity["worst"]["drop_points"] == pytest.approx(100.0)
    assert "own" not in report["verdicts"]
    # How far each AE moves images: the identity not at all, the masking AE the white corner by 1.
    moved = {
        label: entry["aes"][label]["kl"]["largest_pixel_change"] for label in ("own", "identity")
    }
    assert moved["identity"]["clean_unchanged"] == 1.0 and moved["identity"]["triggered_min"] == [
        0.0
    ]
    assert moved["identity"]["triggered_unchanged"] == [1.0]
    assert moved["own"]["triggered_min"] == [1.0] and moved["own"]["triggered_unchanged"] == [0.0]


def test_speed_cells_and_ratios(run: tuple) -> None:
    report, _ = run
    for batch in ("1", "64"):
        cells = report["speed"][batch]
        assert set(cells) == {"target"} | {
            f"{kind}:{label}" for kind in ("ae", "guard") for label in ("own", "copy", "identity")
        }
        assert all(len(c["rounds"]) == 2 and c["median"] > 0 for c in cells.values())
        ratio = report["speed_ratios"][batch]["own"]
        # The identity AE returns every image bit for bit: its guard pass runs the target once.
        assert report["unchanged_clean"]["share"]["identity"] == 1.0
        assert ratio["ae_cost_vs_target"] == pytest.approx(
            cells["target"]["median"] / cells["ae:own"]["median"]
        )


def test_markdown_has_the_tables_and_the_verdict(run: tuple) -> None:
    report, out = run
    md = (out / "mnist.md").read_text()
    assert report["command"] in md
    assert "| 64 | own |" in md and "own (baseline)" in md and "unchanged %" in md
    assert "| badnets-white | identity | " in md and "triggered unchanged %" in md
    assert "- **identity**: fails the 0.5-point rule; largest drop +100.00 points" in md
    assert "- **copy**: passes the 0.5-point rule" in md


def test_needs_two_distinct_aes(tmp_path: Path) -> None:
    ae = identity_ae(tmp_path / "id.onnx")
    with pytest.raises(SystemExit):
        main(["--ae", f"a={ae}"])
    with pytest.raises(SystemExit):
        main(["--ae", f"a={ae}", "--ae", f"a={ae}"])
    with pytest.raises(SystemExit):
        main(["--ae", f"a={ae}", "--ae", f"b={ae}", "--baseline", "c"])


def test_confidence_thresholds_each_ae_as_the_shipped_sets_are(run: tuple, tmp_path: Path) -> None:
    """--confidence 0.95 lets fewer clean validation images past an AE's KL threshold than the
    plain quantile (same images, same target FPR, no floor), and the report says which rule."""
    _, out = run
    tiny = out.parent / "tiny"
    args = ["--dataset", "mnist", "--data-dir", str(out.parent / "mnist"), "--shipped", str(tiny)]
    args += ["--sets", str(tiny), "--ae", f"own={tiny / 'detrigger.onnx'}"]
    args += ["--ae", f"identity={out.parent / 'id.onnx'}", "--no-speed", "--kl-floor", "0"]
    args += ["--target-fpr", "0.05", "--batch-size", "16"]
    plain = main([*args, "--out", str(tmp_path / "plain")])
    sure = main([*args, "--out", str(tmp_path / "sure"), "--confidence", "0.95"])
    assert (plain["config"]["confidence"], sure["config"]["confidence"]) == (0.0, 0.95)
    own_plain, own_sure = (r["sets"][0]["aes"]["own"]["kl"] for r in (plain, sure))
    assert own_sure["threshold"] > own_plain["threshold"]
    fpr_plain = own_plain["validation_false_positive_rate"]
    assert own_sure["validation_false_positive_rate"] < fpr_plain <= 0.05
    assert "at confidence 0.95 (the shipped sets' rule)" in (tmp_path / "sure/mnist.md").read_text()
    assert "the plain quantile" in (tmp_path / "plain/mnist.md").read_text()
    with pytest.raises(SystemExit, match="badnets-white"):  # too few images for 0.1% at 0.95
        main([*args, "--out", str(tmp_path), "--target-fpr", "0.001", "--confidence", "0.95"])
