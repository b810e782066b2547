"""reports/byom/twin-adversarial: fit's twin with and without the universal perturbation
(TwinConfig.adversarial) on backdoored models it never saw, by `python -m bench.twin_recipes`.
The table is what the results file gives, every model has the recipe without the perturbation
and fit's default, and the prose, docs/byom.md and README.md quote the results."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tests.docs.mdparse import REPO
from tests.docs.twin_recipe_reports import check_table, pct
from training.fit.twin import TwinConfig, adversarial_radius

REPORT = REPO / "reports" / "byom" / "twin-adversarial"
CHANNELS = {"mnist": 1, "fashion-mnist": 1, "cifar10": 3}


def default_radius(by_radius: dict[float, dict[str, Any]]) -> float:
    """fit's radius for the model's images (TwinConfig.adversarial None: by their channels)."""
    (dataset,) = {r["dataset"] for r in by_radius.values()}
    return adversarial_radius(TwinConfig(), CHANNELS[dataset])


def runs() -> dict[str, dict[float, dict[str, Any]]]:
    """model -> adversarial radius -> its result line."""
    out: dict[str, dict[float, dict[str, Any]]] = defaultdict(dict)
    for line in (REPORT / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        assert r["config"]["adversarial"] not in out[r["model"]], (r["model"], "run twice")
        out[r["model"]][r["config"]["adversarial"]] = r
    return out


def test_the_table_is_the_results(tmp_path: Path) -> None:
    check_table(REPORT, tmp_path)


def test_each_model_has_fits_default_and_the_recipe_without_the_perturbation() -> None:
    default = asdict(TwinConfig())
    found = runs()
    assert len(found) >= 5 and {"mnist", "fashion-mnist", "cifar10"} == {
        r["dataset"] for by_radius in found.values() for r in by_radius.values()
    }
    for model, by_radius in found.items():
        radius = default_radius(by_radius)
        assert radius > 0
        # a field a record lacks was the recipe's: it did not exist yet (the stamped triggers)
        for r, config in ((radius, by_radius[radius]["config"]), (0.0, by_radius[0.0]["config"])):
            assert {**default, **config} == {**default, "adversarial": r}, model
            assert "triggers" not in config, model


def test_the_prose_and_the_docs_quote_the_results() -> None:
    texts = {
        name: " ".join(path.read_text().split())
        for name, path in (
            ("report", REPORT / "README.md"),
            ("walkthrough", REPO / "docs" / "byom.md"),
            ("readme", REPO / "README.md"),
        )
    }
    for model, by_radius in runs().items():
        before, after = by_radius[0.0], by_radius[default_radius(by_radius)]
        quoted = (
            f"{model} {pct(before, 'detection_fired')} -> {pct(after, 'detection_fired')} "
            f"(kept {pct(before, 'twin_keeps_backdoor')} -> {pct(after, 'twin_keeps_backdoor')})"
        )
        assert quoted in texts["report"], quoted
        assert quoted in texts["walkthrough"], quoted
    sig = runs()["fashion-mnist-sig"]
    after = sig[default_radius(sig)]
    quoted = f"{pct(sig[0.0], 'detection_fired')}% to {pct(after, 'detection_fired')}%"
    assert quoted in texts["readme"], quoted
