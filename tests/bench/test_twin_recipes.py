"""bench.twin_recipes: a recipe is read into TwinConfig's types, and the table shows the radius
each twin used, fit's default (by the images' channels) included, and its stamped triggers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench.twin_recipes import parse_recipe, table


def test_a_recipe_is_read_into_the_twin_configs_types() -> None:
    assert parse_recipe("fst:adversarial=0,reinit_head=false,epochs=2") == (
        "fst",
        {"adversarial": 0.0, "reinit_head": False, "epochs": 2},
    )
    assert parse_recipe("default") == ("default", {})
    assert parse_recipe("held-out:trigger_exclude=warp+filter") == (
        "held-out",
        {"trigger_exclude": ("warp", "filter")},
    )
    with pytest.raises(SystemExit, match="no TwinConfig field 'speed'"):
        parse_recipe("x:speed=2")


def test_the_table_shows_the_radius_each_twin_used(tmp_path: Path) -> None:
    share = {"rate": 0.5, "ci95": [0.4, 0.6]}
    common = {
        "attack_success": 0.9, "val_agreement": 0.95, "fpr_clean_test": share,
        "detection_triggered_test": share, "detection_fired": share,
        "twin_keeps_backdoor": share, "twin_seconds": 12.0,
    }  # fmt: skip
    lines = [
        {"model": "m", "recipe": "default", "config": {"adversarial": None},
         "adversarial_radius": 0.03, **common},
        {"model": "m", "recipe": "fst", "config": {"adversarial": 0.0},
         "adversarial_radius": 0.0, **common},
        {"model": "m", "recipe": "held-out", "adversarial_radius": 0.1, **common,
         "config": {"adversarial": 0.1, "triggers": 0.5, "trigger_families": "extended",
                    "trigger_exclude": ["warp", "filter"]}},
    ]  # fmt: skip
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    table(argparse.Namespace(out=str(tmp_path)))
    rows = (tmp_path / "table.md").read_text().splitlines()
    assert rows[2].startswith("| m | default | 0.03 | 0 | 90.00 | 95.00 | 50.00 [40.00, 60.00] |")
    assert rows[3].startswith("| m | fst | 0 | 0 |")
    assert rows[4].startswith("| m | held-out | 0.1 | 0.5 extended less warp less filter | 90.00 |")
