"""reports/byom/mnist-warp: the table of its README is what bench.byom measure wrote beside it
(measure-<detector>.json), at the precision the README shows."""

from __future__ import annotations

import json

from tests.docs.mdparse import REPO, table

FOLDER = REPO / "reports" / "byom" / "mnist-warp"
COLUMNS = ["detector", "clean FPR % [95% CI] (k/n)", "detection % [95% CI] (k/n)"]


def shown(share: dict) -> str:
    lo, hi = share["ci95"]
    return f"{100 * share['rate']:.2f} [{100 * lo:.2f}, {100 * hi:.2f}] ({share['k']}/{share['n']})"


def test_the_table_is_the_measurements() -> None:
    rows = table(FOLDER / "README.md", COLUMNS)
    assert [r["detector"] for r in rows] == ["detrigger", "repaired", "detrigger_or_repaired"]
    for row in rows:
        measured = json.loads((FOLDER / f"measure-{row['detector']}.json").read_text())
        assert measured["detector"] == row["detector"]
        assert row["clean FPR % [95% CI] (k/n)"] == shown(measured["fpr_clean_test"])
        assert row["detection % [95% CI] (k/n)"] == shown(measured["detection_triggered_test"])


def test_the_attack_success_quoted_is_the_measured_one() -> None:
    measured = json.loads((FOLDER / "measure-repaired.json").read_text())
    text = (FOLDER / "README.md").read_text()
    assert f"{100 * measured['attack_success']:.2f}%" in text
