"""docs/fusion.md's table of detector both beside each detector alone is the one that
training.fusion_report writes from reports/fusion/fusion.json (the numbers as measured), and
reports/fusion/README.md is that report's page."""

from __future__ import annotations

import json

from tests.docs.mdparse import REPO
from training.fusion_report import BEGIN, DETECTORS, END, readme, table_lines

REPORT = REPO / "reports" / "fusion" / "fusion.json"


def block(text: str) -> list[str]:
    _, _, rest = text.partition(BEGIN + "\n")
    inside, closed, _ = rest.partition(END)
    assert closed, f"no {BEGIN!r} ... {END!r} block"
    return inside.splitlines()


def test_the_docs_table_is_the_reports() -> None:
    report = json.loads(REPORT.read_text())
    assert block((REPO / "docs" / "fusion.md").read_text()) == table_lines(report)
    readme_text = (REPO / "reports" / "fusion" / "README.md").read_text()
    assert readme_text == "\n".join(readme(report)) + "\n"


def test_the_report_covers_every_detector_with_intervals() -> None:
    report = json.loads(REPORT.read_text())
    assert report["sets"], "no set measured"
    for s in report["sets"]:
        assert s["split"] == "test"
        for d in DETECTORS:
            fp = s["false_positive"][d]
            assert fp["n"] == s["clean_images"] and fp["ci95"][0] <= fp["rate"] <= fp["ci95"][1]
            for t in s["triggers"]:
                assert t["detection"][d]["n"] == t["images"]
