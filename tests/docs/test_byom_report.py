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


SHIFT = REPO / "reports" / "byom" / "calibration-shift"
SHIFT_COLUMNS = ["set", "held-out images", "measured", "threshold", "held-out flagged %"]


def shift_table() -> dict[str, dict[str, dict]]:
    """calibration-shift's table, each row checked against its measurement and its set's
    report (today's rows beside the page, the earlier ones in their folders), keyed by set and
    by how the held-out images were used."""
    rows = table(SHIFT / "README.md", [*SHIFT_COLUMNS, *COLUMNS[1:]])
    by_set: dict[str, dict[str, dict]] = {}
    for row in rows:
        path = REPO / "reports" / "byom" / row["measured"]
        measured = json.loads(path.read_text())
        report = json.loads(path.with_name(path.name.replace("measure-", "report-")).read_text())
        d = report["calibration"]["decision"]
        assert report["training"]["epochs_done"] == 12 and measured["detector"] == "detrigger"
        assert row["threshold"] == f"{d['threshold']:.4g}"
        held = f"{100 * d['false_positive']['rate']:.2f}"
        if "shift" in d:
            assert path.parent == SHIFT and row["held-out images"] == "shifted 2 px"
            assert d["shift"]["pixels"] == 2
            held += f" ({100 * d['shift']['false_positive_unshifted']['rate']:.2f} as they are)"
        else:
            assert row["held-out images"] == "as they are"
        assert row["held-out flagged %"] == held
        assert row["clean FPR % [95% CI] (k/n)"] == shown(measured["fpr_clean_test"])
        assert row["detection % [95% CI] (k/n)"] == shown(measured["detection_triggered_test"])
        by_set.setdefault(row["set"], {})[row["held-out images"]] = measured | {"report": d}
    return by_set


def _rates(m: dict) -> tuple[float, float]:
    return 100 * m["fpr_clean_test"]["rate"], 100 * m["detection_triggered_test"]["rate"]


def test_the_shifted_calibration_table_is_the_measurements() -> None:
    """calibration-shift: the table is the measurements; the two calibrations of one AE differ
    in the threshold only, so detection at a fixed test FPR is the same; the prose's figures
    are the table's."""
    by_set = shift_table()
    for name, pair in by_set.items():
        if len(pair) == 2:
            before, after = pair["as they are"], pair["shifted 2 px"]
            assert before.get("at_test_fpr") == after.get("at_test_fpr"), name
            assert before["attack_success"] == after["attack_success"], name
    text = " ".join((SHIFT / "README.md").read_text().split())
    dyn = by_set["CIFAR-10, hidden dynamic"]
    (old, old_det), (new, new_det) = (_rates(dyn[k]) for k in ("as they are", "shifted 2 px"))
    assert f"from {old:.2f}% to {new:.2f}%" in text
    assert f"{old_det - new_det:.2f} points of detection" in text
    unshifted = dyn["shifted 2 px"]["report"]["shift"]["false_positive_unshifted"]["rate"]
    assert f"flags {100 * unshifted:.2f}% of them" in text
    fm, mn = (by_set[k]["shifted 2 px"] for k in ("Fashion-MNIST demo", "MNIST demo"))
    assert f"falling to {_rates(fm)[0]:.2f}% and {_rates(mn)[0]:.2f}%" in text
    fm_cost = _rates(by_set["Fashion-MNIST demo"]["as they are"])[1] - _rates(fm)[1]
    assert f"a cost of {fm_cost:.2f} points of detection on Fashion-MNIST" in text


def test_the_walkthrough_quotes_the_shifted_calibration() -> None:
    """docs/byom.md's table of the two calibrations: the calibration-shift measurements, and
    the largest detection cost it states is theirs."""
    by_set = shift_table()
    first = "the same AE, clean test FPR / detection"
    columns = [first, "as they are", "shifted by up to 2 px (default)"]
    rows = table(REPO / "docs" / "byom.md", columns)
    assert {r[first] for r in rows} == {k for k, v in by_set.items() if len(v) == 2}
    costs = []
    for row in rows:
        pair = by_set[row[first]]
        for column, key in zip(columns[1:], ("as they are", "shifted 2 px"), strict=True):
            fpr, detection = _rates(pair[key])
            assert row[column] == f"{fpr:.2f}% / {detection:.2f}%"
        costs.append(_rates(pair["as they are"])[1] - _rates(pair["shifted 2 px"])[1])
    text = " ".join((REPO / "docs" / "byom.md").read_text().split())
    assert f"costs at most {max(costs):.2f} points of detection" in text


@pytest.mark.parametrize(
    "key, attack", [("cifar10-rcp", "random-colour-patch"), ("fashion-mnist-blend", "blend")]
)
def test_the_hidden_runs_are_quoted_from_their_files(key: str, attack: str) -> None:
    """calibration-shift's from-scratch runs: the backdoor's accuracy and attack success and
    fit's times are their files'; fit ran with today's defaults."""
    backdoor = json.loads((SHIFT / f"backdoor-{key}.json").read_text())
    report = json.loads((SHIFT / f"report-{key}.json").read_text())
    text = " ".join((SHIFT / "README.md").read_text().split())
    (worked,) = backdoor["test"]["attacks"]
    assert backdoor["attack"] == attack
    assert f"clean accuracy {100 * backdoor['test']['clean_accuracy']:.2f}%" in text
    assert f"attack success {100 * worked['attack_success_rate']:.2f}%" in text
    wall, ae = report["wall_seconds"], report["training"]["wall_seconds"]
    assert f"({wall:.0f} s, the AE {ae:.0f} s)" in text
    assert report["training"]["families"] == "stamped" and report["training"]["epochs_done"] == 12
    assert "--run-dir" not in report["command"] and "--epochs" not in report["command"]
    assert "--calibration-shift" not in report["command"]


def test_the_hidden_rcp_detection_is_quoted_in_the_walkthrough() -> None:
    fpr, detection = _rates(json.loads((SHIFT / "measure-cifar10-rcp.json").read_text()))
    docs = " ".join((REPO / "docs" / "byom.md").read_text().split())
    assert f"detected {detection:.2f}% at {fpr:.2f}% clean test FPR" in docs


def test_the_blend_prose_is_its_measurements() -> None:
    """The Fashion-MNIST blend paragraph: the shift's cost and the attacks that worked."""
    shifted, plain = (
        json.loads((SHIFT / f"measure-fashion-mnist-blend{s}.json").read_text())
        for s in ("", "-plain")
    )
    text = " ".join((SHIFT / "README.md").read_text().split())
    fired = shifted["detection_fired"]
    assert f"flags {_rates(shifted)[0]:.2f}% of the test images" in text
    assert f"{_rates(plain)[1] - _rates(shifted)[1]:.2f} points fewer triggered ones" in text
    assert f"the set flags {100 * fired['rate']:.2f}% ({fired['k']}/{fired['n']})" in text
    assert f"{100 * plain['detection_fired']['rate']:.2f}% with the held-out images" in text
    at = shifted["at_test_fpr"]["0.01"]["detection_fired"]["rate"]
    assert f"{100 * at:.2f}% at 1% test FPR" in text
    report = json.loads((SHIFT / "report-fashion-mnist-blend-plain.json").read_text())
    held = 100 * report["calibration"]["decision"]["false_positive"]["rate"]
    assert f"{held:.2f}" == f"{_rates(plain)[0]:.2f}" and f"({held:.2f}% both)" in text
    success = 100 * shifted["attack_success"]
    docs = " ".join((REPO / "docs" / "byom.md").read_text().split())
    assert f"only {success:.2f}% of triggered images obey" in docs
    assert f"takes only {success:.2f}% of the triggered images" in text
