"""docs/fusion.md's table of detector both beside each detector alone is the one that
training.fusion_report writes from reports/fusion/fusion.json (the numbers as measured), and
reports/fusion/README.md is that report's page; the same for the attack suite's run
(reports/fusion/suite) and its summary in the docs."""

from __future__ import annotations

import json

import pytest

from tests.docs.mdparse import REPO
from training.fusion_report import (
    BEGIN,
    DETECTORS,
    END,
    OPTIONAL,
    readme,
    summary_lines,
    table_lines,
)

REPORT = REPO / "reports" / "fusion" / "fusion.json"
SUITE = REPO / "reports" / "fusion" / "suite" / "fusion.json"
SUITE_BEGIN = (
    "<!-- fusion suite summary: python -m training.fusion_report, reports/fusion/suite -->"
)
SUITE_END = "<!-- end of fusion suite summary -->"
REPAIRED = REPO / "reports" / "fusion" / "repaired" / "fusion.json"
REPAIRED_FM = REPO / "reports" / "fusion" / "repaired-fashion-mnist" / "fusion.json"
REPAIRED_BEGIN = (
    "<!-- fusion repaired summary: python -m training.fusion_report, reports/fusion/{} -->"
)
REPAIRED_END = "<!-- end of fusion repaired summary -->"


def block(text: str, begin: str = BEGIN, end: str = END) -> list[str]:
    _, _, rest = text.partition(begin + "\n")
    inside, closed, _ = rest.partition(end)
    assert closed, f"no {begin!r} ... {end!r} block"
    return inside.splitlines()


def test_the_docs_table_is_the_reports() -> None:
    report = json.loads(REPORT.read_text())
    assert block((REPO / "docs" / "fusion.md").read_text()) == table_lines(report)
    readme_text = (REPORT.parent / "README.md").read_text()
    assert readme_text == "\n".join(readme(report, REPORT.parent)) + "\n"


def test_the_suite_report_and_its_summary_in_the_docs() -> None:
    report = json.loads(SUITE.read_text())
    readme_text = (SUITE.parent / "README.md").read_text()
    assert readme_text == "\n".join(readme(report, SUITE.parent)) + "\n"
    docs = (REPO / "docs" / "fusion.md").read_text()
    assert block(docs, SUITE_BEGIN, SUITE_END) == summary_lines(report)


@pytest.mark.parametrize("path", [REPAIRED, REPAIRED_FM], ids=["mnist", "fashion-mnist"])
def test_the_repaired_reports_and_their_summaries_in_the_docs(path) -> None:
    report = json.loads(path.read_text())
    readme_text = (path.parent / "README.md").read_text()
    assert readme_text == "\n".join(readme(report, path.parent)) + "\n"
    docs = (REPO / "docs" / "fusion.md").read_text()
    begin = REPAIRED_BEGIN.format(path.parent.name)
    assert block(docs, begin, REPAIRED_END) == summary_lines(report)
    assert any("repaired" in s["false_positive"] for s in report["sets"])


@pytest.mark.parametrize(
    "path",
    [REPORT, SUITE, REPAIRED, REPAIRED_FM],
    ids=["shipped", "suite", "repaired", "repaired-fashion-mnist"],
)
def test_the_report_covers_every_detector_with_intervals(path) -> None:
    report = json.loads(path.read_text())
    assert report["sets"], "no set measured"
    for s in report["sets"]:
        assert s["split"] == "test"
        for d in DETECTORS + tuple(d for d in OPTIONAL if d in s["false_positive"]):
            fp = s["false_positive"][d]
            assert fp["n"] == s["clean_images"] and fp["ci95"][0] <= fp["rate"] <= fp["ci95"][1]
            for t in s["triggers"]:
                assert t["detection"][d]["n"] == t["images"]
