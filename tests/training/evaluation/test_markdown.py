"""The reports' one Markdown renderer: the exact bytes of rows, rules and tables."""

from __future__ import annotations

import pytest

from training.evaluation.markdown import pct, row, rule, table


def test_a_row_pads_cells_and_leaves_an_empty_cell_one_space() -> None:
    assert row(["a", 1, "", "b c"]) == "| a | 1 | | b c |"
    assert row(["", "before", "after"]) == "| | before | after |"


def test_rules_compact_spaced_and_aligned() -> None:
    assert rule(3) == "|---|---|---|"
    assert rule(3, right=True) == "|---|---:|---:|"
    assert rule(2, spaced=True) == "| --- | --- |"
    assert rule(4, spaced=True, align="lrrl") == "| --- | ---: | ---: | --- |"
    with pytest.raises(ValueError, match="one of l, r per column"):
        rule(3, align="lr")


def test_a_table_is_header_rule_rows() -> None:
    assert table(["x", "y"], [[1, 2], ["", 3]], right=True) == [
        "| x | y |",
        "|---|---:|",
        "| 1 | 2 |",
        "| | 3 |",
    ]


def test_pct_has_two_decimals() -> None:
    assert pct(0.5) == "50.00" and pct(0.12345) == "12.35" and pct(1.0) == "100.00"
