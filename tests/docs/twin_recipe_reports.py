"""What the reports of `python -m bench.twin_recipes` share (reports/byom/twin-adversarial,
reports/byom/twin-triggers): the table is what the results file gives, and the README shows it."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from bench.twin_recipes import table


def pct(r: dict[str, Any], key: str) -> str:
    """A result line's rate, in % as the reports quote it."""
    return f"{100 * r[key]['rate']:.2f}"


def check_table(report: Path, tmp_path: Path) -> None:
    """The table made again from the report's results.jsonl is its table.md, row for row in
    its README."""
    shutil.copy(report / "results.jsonl", tmp_path)
    table(argparse.Namespace(out=str(tmp_path)))
    rows = (tmp_path / "table.md").read_text()
    assert rows == (report / "table.md").read_text()
    readme = (report / "README.md").read_text()
    assert all(row in readme for row in rows.splitlines())
