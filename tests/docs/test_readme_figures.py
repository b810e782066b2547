"""README's result tables match the JSON they came from, at the precision README shows.

- Detection on the shipped demo sets: reports/<set>/report.json (the shipped AE's results and
  the decision it ships; the same numbers reports/README.md shows) and, for the paper's
  column, reports/README.md (training.report.PAPER is written only there).
- The benchmark: reports/bench/bench.json (every cell, the ceiling, the ratio, and the model
  hashes the section names).
"""

from __future__ import annotations

import json
import re

import pytest

from tests.docs.mdparse import REPO, table

README = REPO / "README.md"
REPORTS = REPO / "reports"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")

DETECTION = [
    "set",
    "clean accuracy",
    "attack success",
    "detection",
    "clean FPR",
    "paper: detection / clean acc.",
]
REPORTS_README = [
    "dataset",
    "clean acc.",
    "ASR",
    "shipped rule",
    "detection",
    "FPR",
    "backdoor acc. after AE",
    "clean acc. after AE",
    "paper: detection / clean acc.",
    "goal: clean / detection / FPR",
]
BENCH = [
    "images/request",
    "concurrency",
    "images/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "requests",
    "errors",
    "mean engine batch",
]
BENCH_KEYS = {
    "images/request": "images_per_request",
    "concurrency": "concurrency",
    "images/s": "images_per_s",
    "p50 ms": "p50_ms",
    "p95 ms": "p95_ms",
    "p99 ms": "p99_ms",
    "requests": "requests",
    "errors": "errors",
    "mean engine batch": "mean_engine_batch",
}


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


def test_benchmark_table_matches_bench_json() -> None:
    bench = json.loads((REPORTS / "bench" / "bench.json").read_text())
    cells = {(c["images_per_request"], c["concurrency"]): c for c in bench["service"]}
    rows = table(README, BENCH)
    assert len(rows) == len(cells), "one README row per cell of bench.json"
    problems = []
    for row in rows:
        key = (int(row["images/request"]), int(row["concurrency"]))
        assert key in cells, f"README row {key} is not in bench.json"
        for column, name in BENCH_KEYS.items():
            if problem := mismatches(row[column], [cells[key][name]]):
                problems.append(f"{key}, {column}: {problem}")
    assert problems == [], "\n".join(problems)


def benchmark_section() -> str:
    text = README.read_text(encoding="utf-8")
    return text.split("\n## Benchmark\n", 1)[1].split("\n## ", 1)[0]


def test_benchmark_prose_matches_bench_json() -> None:
    """The ceiling, the best cell and their ratio; and the AE hashes the caveat names."""
    bench = json.loads((REPORTS / "bench" / "bench.json").read_text())
    summary = bench["summary"]
    section = benchmark_section()
    ceiling = (
        f"is {summary['ceiling_images_per_s']:.1f} images/s at batch {summary['ceiling_batch']}"
    )
    assert ceiling in section
    assert f"the best through the service, {summary['service_best_images_per_s']:.1f}" in section
    assert f"**{summary['ratio']:.2f}**" in section
    measured = bench["model_set"]["detrigger_sha256"][:12]
    manifest = json.loads(
        (REPO / "models" / bench["model_set"]["name"] / "manifest.json").read_text()
    )
    now = manifest["detrigger"]["sha256"][:12]
    assert measured in section, "README should name the AE the benchmark measured"
    if measured != now:
        assert now in section and "not** those of the set shipped today" in section, (
            f"bench.json measured AE {measured}, the set ships {now}: README must say so"
        )
    else:
        assert "not** those of the set shipped today" not in section, "re-measured: drop the caveat"


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
