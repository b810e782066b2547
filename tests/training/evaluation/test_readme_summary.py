"""The project README's table of the shipped sets is written from reports/<set>/report.json by
the command that writes the reports (training.evaluation.report.write_readme, from make
reproduce)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from training.evaluation import report as rep

REPO = Path(__file__).resolve().parents[3]


def shipped_reports() -> dict[str, dict]:
    return {
        name: json.loads((REPO / "reports" / name / "report.json").read_text())
        for name in ("mnist", "fashion-mnist", "cifar10")
    }


def test_readme_table_is_what_the_reports_write(tmp_path: Path) -> None:
    copy = tmp_path / "README.md"
    shutil.copy(REPO / "README.md", copy)
    rep.update_summary(copy, shipped_reports())
    assert copy.read_text() == (REPO / "README.md").read_text()


def test_the_block_is_rewritten_and_the_rest_kept(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{rep.SUMMARY_BEGIN}\n| stale |\n{rep.SUMMARY_END}\ntail\n")
    mnist = shipped_reports()["mnist"]
    rep.update_summary(readme, {"mnist": mnist})
    text = readme.read_text()
    assert "stale" not in text and text.startswith("intro\n") and text.endswith("tail\n")
    accuracy = 100 * mnist["results"][mnist["shipped_ae"]]["clean_accuracy"]
    assert f"| `mnist` | {accuracy:.2f}% |" in text


def test_a_readme_without_the_block_is_refused(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("no table here\n")
    with pytest.raises(ValueError, match="no"):
        rep.update_summary(readme, shipped_reports())
    assert readme.read_text() == "no table here\n"
