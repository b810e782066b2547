"""reports/byom/twin-triggers: fit's twin with and without stamped random triggers
(TwinConfig.triggers) on backdoored models it never saw, by `python -m bench.twin_recipes`. The
table is what the results file gives, every model has fit's default before (the universal
perturbation alone, the twin-adversarial report's run) and now, and the prose and
docs/byom.md quote the results."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tests.docs.mdparse import REPO
from tests.docs.twin_recipe_reports import check_table, pct
from training.fit.twin import TwinConfig, adversarial_radius

REPORT = REPO / "reports" / "byom" / "twin-triggers"
CHANNELS = {"mnist": 1, "fashion-mnist": 1, "cifar10": 3}


def runs() -> dict[str, dict[str, dict[str, Any]]]:
    """model -> recipe -> its result line."""
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for line in (REPORT / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        assert r["recipe"] not in out[r["model"]], (r["model"], r["recipe"], "run twice")
        out[r["model"]][r["recipe"]] = r
    return out


def test_the_table_is_the_results(tmp_path: Path) -> None:
    check_table(REPORT, tmp_path)


def test_each_model_has_fits_default_before_and_now() -> None:
    now = json.loads(json.dumps(asdict(TwinConfig())))  # as the results file holds it
    found = runs()
    assert len(found) >= 5 and {"mnist", "fashion-mnist", "cifar10"} == {
        r["dataset"] for by_recipe in found.values() for r in by_recipe.values()
    }
    for model, by_recipe in found.items():
        before, after = by_recipe["adversarial"], by_recipe["triggers"]
        radius = adversarial_radius(TwinConfig(), CHANNELS[before["dataset"]])
        # fit's recipe then: the same fields, no stamped triggers (from before they existed)
        assert "triggers" not in before["config"], model
        assert {**now, **before["config"]} == {**now, "adversarial": radius}, model
        assert after["config"] == now and after["adversarial_radius"] == radius, model
        assert before["val_agreement"] > 0.9 and after["val_agreement"] > 0.9, model


def test_the_prose_and_the_walkthrough_quote_the_results() -> None:
    report = " ".join((REPORT / "README.md").read_text().split())
    walkthrough = " ".join((REPO / "docs" / "byom.md").read_text().split())
    for model, by_recipe in runs().items():
        before, after = by_recipe["adversarial"], by_recipe["triggers"]
        quoted = (
            f"{model} {pct(before, 'detection_fired')} -> {pct(after, 'detection_fired')} "
            f"(kept {pct(before, 'twin_keeps_backdoor')} -> {pct(after, 'twin_keeps_backdoor')})"
        )
        assert quoted in report and quoted in walkthrough, quoted
        if "triggers-heldout" in by_recipe:
            held = by_recipe["triggers-heldout"]
            left_out = "+".join(held["config"]["trigger_exclude"])
            assert f"{model} without {left_out}: {pct(held, 'detection_fired')}" in report


def test_the_walkthrough_says_how_much_of_the_patch_gain_is_not_the_patch_family() -> None:
    walkthrough = " ".join((REPO / "docs" / "byom.md").read_text().split())
    demo = runs()["fashion-mnist-demo"]
    before, after, held = (
        100 * demo[r]["detection_fired"]["rate"]
        for r in ("adversarial", "triggers", "triggers-heldout")
    )
    assert demo["triggers-heldout"]["config"]["trigger_exclude"] == ["patch"]
    quoted = f"the patch still gains {held - before:.0f} of its {after - before:.0f} points"
    assert quoted in walkthrough, quoted
