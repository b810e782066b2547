"""The one Markdown renderer of the reports: tables (a header, its rule, the rows) and percentages,
so that no writer builds `| a | b |` lines by hand. Every report (reports/<dataset>, detection,
audit, joint, tuning, swaps) renders its tables here, and they keep the exact bytes they had.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path


def pct(v: float) -> str:
    """A share in [0, 1] as a percentage with two decimals, without the % sign."""
    return f"{100 * v:.2f}"


def row(cells: Iterable[object]) -> str:
    """`| a | b |`; an empty cell is `| |`."""
    return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"


def rule(columns: int, right: bool = False, spaced: bool = False, align: str = "") -> str:
    """The line under a header: `|---|---|` (`spaced`: `| --- | --- |`); `right`: every column
    after the first right-aligned (`---:`), for columns of numbers; `align`, one letter per
    column (`l` or `r`), says it column by column instead."""
    align = align or "l" + ("r" if right else "l") * (columns - 1)
    if len(align) != columns or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r}: one of l, r per column ({columns})")
    cells = ["---:" if a == "r" else "---" for a in align]
    return row(cells) if spaced else "|" + "|".join(cells) + "|"


def table(
    header: Sequence[str],
    rows: Iterable[Sequence[object]],
    right: bool = False,
    spaced: bool = False,
    align: str = "",
) -> list[str]:
    """A whole table as lines: header, rule, one line per row."""
    return [row(header), rule(len(header), right, spaced, align), *(row(r) for r in rows)]


def evidence_lines(report: dict, stage_seconds: dict[str, float]) -> list[str]:
    """The "Evidence" heading and its lines: command, seed, hardware, versions, wall time."""
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in stage_seconds.items())
    return [
        "## Evidence",
        "",
        f"- command: `{report['command']}`",
        f"- seed: {report['seed']}",
        f"- hardware: {report['hardware']}",
        f"- versions: {versions}",
        f"- wall time: {report['wall_seconds']:.0f} s" + (f" (stages: {stages})" if stages else ""),
        *([f"- note: {report['note']}"] if report.get("note") else []),
    ]


def replace_block(path: Path, begin: str, end: str, lines: Sequence[str]) -> None:
    """Rewrite the lines between the marker lines ``begin`` and ``end`` of the file at ``path``
    (a generated table inside a hand-written page); ValueError when the markers are missing."""
    text = path.read_text()
    head, found, rest = text.partition(begin + "\n")
    _, closed, tail = rest.partition(end)
    if not (found and closed):
        raise ValueError(f"{path} has no {begin!r} ... {end!r} block")
    path.write_text(head + found + "".join(line + "\n" for line in lines) + closed + tail)
