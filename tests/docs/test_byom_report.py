"""reports/byom/*: the tables of their READMEs are what bench.byom measure wrote beside them
(measure-<detector>.json, or measure-<families>.json for cifar10-dynamic), at the precision
the READMEs show."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.docs.mdparse import REPO, table

FOLDER = REPO / "reports" / "byom" / "mnist-warp"
FASHION = REPO / "reports" / "byom" / "fashion-mnist-warp"
DYNAMIC = REPO / "reports" / "byom" / "cifar10-dynamic"
COLUMNS = ["detector", "clean FPR % [95% CI] (k/n)", "detection % [95% CI] (k/n)"]


def shown(share: dict) -> str:
    lo, hi = share["ci95"]
    return f"{100 * share['rate']:.2f} [{100 * lo:.2f}, {100 * hi:.2f}] ({share['k']}/{share['n']})"


@pytest.mark.parametrize(
    "first, page, folder",
    [
        ("detector", FOLDER, FOLDER),
        ("detector (fit --audit)", FOLDER, FOLDER / "fit-audit"),
        ("detector", FASHION, FASHION),
    ],
    ids=["mnist-three-commands", "mnist-fit-audit", "fashion-mnist-fit-audit"],
)
def test_the_tables_are_the_measurements(first: str, page: Path, folder: Path) -> None:
    columns = [first, *COLUMNS[1:]]
    rows = table(page / "README.md", columns)
    assert [r[first] for r in rows] == ["detrigger", "repaired", "detrigger_or_repaired"]
    for row in rows:
        measured = json.loads((folder / f"measure-{row[first]}.json").read_text())
        assert measured["detector"] == row[first]
        assert row["clean FPR % [95% CI] (k/n)"] == shown(measured["fpr_clean_test"])
        assert row["detection % [95% CI] (k/n)"] == shown(measured["detection_triggered_test"])


@pytest.mark.parametrize("folder", [FOLDER, FASHION], ids=["mnist", "fashion-mnist"])
def test_the_attack_success_quoted_is_the_measured_one(folder: Path) -> None:
    measured = json.loads((folder / "measure-repaired.json").read_text())
    text = (folder / "README.md").read_text()
    assert f"{100 * measured['attack_success']:.2f}%" in text


def test_the_fit_families_table_is_the_measurements() -> None:
    """cifar10-dynamic: fit's default family set against base, one measurement each."""
    first = "fit's AE families"
    rows = table(DYNAMIC / "README.md", [first, *COLUMNS[1:]])
    assert [r[first] for r in rows] == ["stamped", "base"]
    for row in rows:
        measured = json.loads((DYNAMIC / f"measure-{row[first]}.json").read_text())
        assert measured["detector"] == "detrigger"
        assert row["clean FPR % [95% CI] (k/n)"] == shown(measured["fpr_clean_test"])
        assert row["detection % [95% CI] (k/n)"] == shown(measured["detection_triggered_test"])
    report = json.loads((DYNAMIC / "report-stamped.json").read_text())
    assert report["training"]["epochs_done"] == 4  # fit's default then, not stopped by its budget
    text = (DYNAMIC / "README.md").read_text()
    assert f"{100 * measured['attack_success']:.2f}%" in text


def test_the_dynamic_12_epoch_row_is_the_measurement() -> None:
    """cifar10-dynamic at fit's 12-epoch default: one measurement, its report's epochs."""
    first = "fit, 12 epochs"
    (row,) = table(DYNAMIC / "README.md", [first, *COLUMNS[1:]])
    assert row[first] == "stamped"
    measured = json.loads((DYNAMIC / "measure-stamped-12.json").read_text())
    assert measured["detector"] == "detrigger"
    assert row["clean FPR % [95% CI] (k/n)"] == shown(measured["fpr_clean_test"])
    assert row["detection % [95% CI] (k/n)"] == shown(measured["detection_triggered_test"])
    report = json.loads((DYNAMIC / "report-stamped-12.json").read_text())
    assert report["training"]["epochs_done"] == 12
    assert report["training"]["families"] == "stamped"


def test_the_walkthrough_quotes_the_dynamic_measurements() -> None:
    """docs/byom.md's paragraph on the CIFAR-10 dynamic backdoor: the same four figures."""
    text = " ".join((REPO / "docs" / "byom.md").read_text().split())
    for families in ("stamped", "base"):
        measured = json.loads((DYNAMIC / f"measure-{families}.json").read_text())
        detection = 100 * measured["detection_triggered_test"]["rate"]
        fpr = 100 * measured["fpr_clean_test"]["rate"]
        assert f"{detection:.2f}% of the triggered" in text or f"{detection:.2f}% at" in text
        assert f"{fpr:.2f}% clean test FPR" in text or f"at {fpr:.2f}%" in text


def test_the_epochs_table_is_the_measurements() -> None:
    """fit-epochs: fit's stamped AE at 4, 6 and 12 epochs on the MNIST demo target."""
    folder = REPO / "reports" / "byom" / "fit-epochs"
    first = "fit's AE epochs"
    rows = table(folder / "README.md", [first, *COLUMNS[1:], "detection at 0.25% test FPR"])
    assert [r[first] for r in rows] == ["4", "6", "12"]
    for row in rows:
        measured = json.loads((folder / f"measure-{row[first]}.json").read_text())
        report = json.loads((folder / f"report-{row[first]}.json").read_text())
        assert report["training"]["epochs_done"] == int(row[first])
        assert report["training"]["families"] == "stamped"
        assert row["clean FPR % [95% CI] (k/n)"] == shown(measured["fpr_clean_test"])
        assert row["detection % [95% CI] (k/n)"] == shown(measured["detection_triggered_test"])
        at = measured["at_test_fpr"]["0.0025"]
        assert at["fpr_clean_test"]["rate"] == 0.0025
        shown_at = f"{100 * at['detection_triggered_test']['rate']:.2f}"
        assert row["detection at 0.25% test FPR"] == shown_at


@pytest.mark.parametrize(
    "first, labels, runs, epochs, fpr",
    [
        (
            "CIFAR-10, fit's AE epochs",
            ["6", "6, --seed 1", "the shipped models/cifar10"],
            ["cifar10-6", "cifar10-6-seed1", "cifar10-shipped"],
            6,
            "0.0075",
        ),
        (
            "Fashion-MNIST, 12 epochs",
            ["12", "the shipped models/fashion-mnist"],
            ["fashion-mnist-12", "fashion-mnist-shipped"],
            12,
            "0.0038",
        ),
        (
            "CIFAR-10, 12 epochs",
            ["12", "12, --seed 1", "the shipped models/cifar10"],
            ["cifar10-12", "cifar10-12-seed1", "cifar10-shipped"],
            12,
            "0.0075",
        ),
    ],
    ids=["cifar10-6-epochs", "fashion-mnist-12-epochs", "cifar10-12-epochs"],
)
def test_the_fit_rows_beside_the_shipped_set_are_the_measurements(
    first: str, labels: list[str], runs: list[str], epochs: int, fpr: str
) -> None:
    """fit's seeds and the shipped set by the same command, and at the shipped set's test FPR."""
    folder = REPO / "reports" / "byom" / "fit-epochs"
    at_column = f"detection at {100 * float(fpr):.2f}% test FPR"
    rows = table(folder / "README.md", [first, *COLUMNS[1:], at_column])
    assert [r[first] for r in rows] == labels
    for row, run in zip(rows, runs, strict=True):
        measured = json.loads((folder / f"measure-{run}.json").read_text())
        if not run.endswith("-shipped"):
            report = json.loads((folder / f"report-{run}.json").read_text())
            assert report["training"]["epochs_done"] == epochs
            assert report["training"]["families"] == "stamped"
        assert row["clean FPR % [95% CI] (k/n)"] == shown(measured["fpr_clean_test"])
        assert row["detection % [95% CI] (k/n)"] == shown(measured["detection_triggered_test"])
        at = measured["at_test_fpr"][fpr]
        assert at["fpr_clean_test"]["rate"] == float(fpr)
        shown_at = f"{100 * at['detection_triggered_test']['rate']:.2f}"
        assert row[at_column] == shown_at
