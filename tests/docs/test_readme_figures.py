"""README's result tables match the JSON they came from, at the precision README shows.

- Detection on the shipped demo sets: reports/<set>/report.json (the shipped AE's results and
  the decision it ships; the same numbers reports/README.md shows) and, for the paper's
  column, reports/README.md (training.report.PAPER is written only there).
- The benchmark: reports/bench/bench.json (issue 20's targets as the run judged them, and the
  commit it measured).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from bench.report import README_BEGIN, README_END, readme_table
from tests.docs.mdparse import REPO, section_words, table
from training.evaluation.markdown import replace_block
from training.evaluation.report import README_COLUMNS, SUMMARY_COLUMNS

README = REPO / "README.md"
REPORTS = REPO / "reports"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")

DETECTION = list(SUMMARY_COLUMNS)
REPORTS_README = list(README_COLUMNS)
BENCH = ["target", "cell", "measured", "status"]


def numbers(cell: str) -> list[str]:
    return NUMBER.findall(cell)


def same(shown: str, value: float) -> bool:
    """``value`` rounded to as many decimals as ``shown`` has reads as ``shown``."""
    decimals = len(shown.partition(".")[2])
    return f"{value:.{decimals}f}" == shown


def mismatches(cell: str, values: list[float]) -> str | None:
    shown = numbers(cell)
    if len(shown) != len(values) or not all(map(same, shown, values)):
        return f"{cell!r} where the report has {values}"
    return None


def shipped(report: dict) -> dict:
    """The test-set numbers of the decision a model set ships, as training.report picks them."""
    decision = report["decision"]
    key = (
        "class_change"
        if decision["rule"] == "class_change"
        else f"{decision['score']}@fpr{decision['calibration']['target_fpr']:g}"
    )
    return report["results"][report["shipped_ae"]]["test"][key]


def test_detection_table_matches_the_reports() -> None:
    rows = table(README, DETECTION)
    paper = {
        r["dataset"]: r["paper: detection / clean acc."]
        for r in table(REPORTS / "README.md", REPORTS_README)
    }
    produced = sorted(p.parent.name for p in REPORTS.glob("*/report.json"))
    assert sorted(r["set"] for r in rows) == produced, "one README row per reports/<set>/"
    problems = []
    for row in rows:
        report = json.loads((REPORTS / row["set"] / "report.json").read_text())
        results = report["results"][report["shipped_ae"]]
        test = shipped(report)
        expected = {
            "clean accuracy": [100 * results["clean_accuracy"]],
            "attack success": [100 * results["attack_success_rate"]],
            "detection": [100 * test["detection_rate"]],
            "clean FPR": [100 * test["false_positive_rate"]],
            "paper: detection / clean acc.": [float(n) for n in numbers(paper[row["set"]])],
        }
        for column, values in expected.items():
            if problem := mismatches(row[column], values):
                problems.append(f"{row['set']}, {column}: {problem}")
    assert problems == [], "\n".join(problems)


def test_benchmark_table_is_what_make_bench_writes(tmp_path: Path) -> None:
    """Issue 20's targets as bench.json judged them, exactly as bench.run writes them into
    README, and the run the section names."""
    bench = json.loads((REPORTS / "bench" / "bench.json").read_text())
    copy = tmp_path / "README.md"
    shutil.copy(README, copy)
    replace_block(copy, README_BEGIN, README_END, readme_table(bench))
    assert copy.read_text() == README.read_text()
    assert len(table(README, BENCH)) == len(bench["acceptance"])
    assert f"git {bench['environment']['git']}," in section_words(README, "## Benchmark")


@pytest.mark.parametrize(
    ("cell", "values", "ok"),
    [
        ("99.24%", [99.2444], True),
        ("99.24%", [99.236], True),
        ("99.24%", [99.25], False),
        ("91.5 / 96.1", [91.50, 96.10], True),
        ("91.5 / 96.1", [91.50, 96.20], False),
        ("91.5", [91.50, 96.10], False),
        ("533", [533], True),
        ("1.0", [1.04], True),
        ("17.5", [17.6], False),
    ],
)
def test_the_comparison_rounds_like_the_readme(cell: str, values: list[float], ok: bool) -> None:
    assert (mismatches(cell, values) is None) is ok
