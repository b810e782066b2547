"""reports/byom/mnist-warp: the table of its README is what bench.byom measure wrote beside it
(measure-<detector>.json), at the precision the README shows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.docs.mdparse import REPO, table

FOLDER = REPO / "reports" / "byom" / "mnist-warp"
COLUMNS = ["detector", "clean FPR % [95% CI] (k/n)", "detection % [95% CI] (k/n)"]


def shown(share: dict) -> str:
    lo, hi = share["ci95"]
    return f"{100 * share['rate']:.2f} [{100 * lo:.2f}, {100 * hi:.2f}] ({share['k']}/{share['n']})"


@pytest.mark.parametrize(
    "first, folder",
    [("detector", FOLDER), ("detector (fit --audit)", FOLDER / "fit-audit")],
    ids=["three-commands", "fit-audit"],
)
def test_the_tables_are_the_measurements(first: str, folder: Path) -> None:
    columns = [first, *COLUMNS[1:]]
    rows = table(FOLDER / "README.md", columns)
    assert [r[first] for r in rows] == ["detrigger", "repaired", "detrigger_or_repaired"]
    for row in rows:
        measured = json.loads((folder / f"measure-{row[first]}.json").read_text())
        assert measured["detector"] == row[first]
        assert row["clean FPR % [95% CI] (k/n)"] == shown(measured["fpr_clean_test"])
        assert row["detection % [95% CI] (k/n)"] == shown(measured["detection_triggered_test"])


def test_the_attack_success_quoted_is_the_measured_one() -> None:
    measured = json.loads((FOLDER / "measure-repaired.json").read_text())
    text = (FOLDER / "README.md").read_text()
    assert f"{100 * measured['attack_success']:.2f}%" in text
