"""reports/byom/twin-plain: `fit --twin`'s first recipe, the plain fine-tune, on backdoors whose
trigger the AE cannot undo, and on the demo targets; the README's tables are what bench.byom
measure wrote in each run's folder, and each folder's manifest is a set that fit --twin made
with that recipe (PLAIN), or with one option changed (options/)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

from tests.docs import twin_reports as tr
from tests.docs.mdparse import REPO, table
from training.fit.twin import TwinConfig

TWIN = REPO / "reports" / "byom" / "twin-plain"
# no fresh head, no penalty (the runs' records lack the fields that came later)
PLAIN = replace(TwinConfig(), reinit_head=False, head_penalty=0.0, adversarial=0.0)


def hidden() -> list[str]:
    return [p.name for p in tr.runs(TWIN) if not p.name.endswith("-demo")]


def test_the_table_is_the_measurements() -> None:
    tr.check_table(TWIN)


def test_each_run_is_a_set_that_fit_twin_made_with_the_plain_recipe() -> None:
    tr.check_sets(TWIN, PLAIN)


def test_the_prose_quotes_the_measurements() -> None:
    """The ranges the README's findings quote, over the runs whose trigger the AE misses (the
    hidden ones) and the demo controls."""
    text = " ".join((TWIN / "README.md").read_text().split())

    def rate(run: str, detector: str, key: str = "detection_triggered_test") -> float:
        return tr.rate(TWIN, run, detector, key)

    tr.check_hidden_findings(TWIN, text, hidden())
    for run in (p.name for p in tr.runs(TWIN) if p.name.endswith("-demo")):
        ae_alone, fused = rate(run, "detrigger"), rate(run, "detrigger_or_repaired")
        assert f"{ae_alone:.2f} -> {fused:.2f}" in text and round(ae_alone - fused, 2) <= 0.2
    records = tr.repair_records(TWIN)
    for prefix, label in (("fashion-mnist", "there"), ("mnist", "on MNIST")):
        values = [100 * r["val_agreement"] for k, r in records.items() if k.startswith(prefix)]
        assert f"{tr.span(values)}% agreement with the target {label}" in text or (
            f"{tr.span(values)}% {label}" in text
        )
    assert tr.twin_seconds(TWIN)[0] in text
    assert f"{records['cifar10-sig']['wall_seconds']:,.0f} s (cifar10-sig)" in text
    assert f"{records['cifar10-demo']['wall_seconds']:,.0f} s (cifar10-demo)" in text
    survived = tr.span([rate("mnist-demo", "repaired"), rate("fashion-mnist-demo", "repaired")])
    assert f"(the twin flags {survived}% of the patched images)" in text
    assert f"lost most of it ({rate('cifar10-demo', 'repaired'):.2f}%)" in text


def test_the_other_recipes_table_is_the_measurements() -> None:
    options = TWIN / "options"
    columns = [tr.COLUMNS[0], "twin recipe", *tr.COLUMNS[2:]]
    rows = table(TWIN / "README.md", columns)
    assert {r["run"] for r in rows} == {p.name for p in options.iterdir() if p.is_dir()}
    for row in rows:
        config = json.loads((options / row["run"] / "manifest.json").read_text())["detectors"]
        config = {**asdict(PLAIN), **config["repaired"]["source"]["repair"]["config"]}
        recipe = f"lr {config['lr']:g}" + (", head afresh" if config["reinit_head"] else "")
        assert row["twin recipe"] == recipe
        assert {**config, "lr": 1e-3, "reinit_head": False} == asdict(PLAIN)  # one change
    tr.check_rows(options, rows)
    text = " ".join((TWIN / "README.md").read_text().split())

    def twin(folder, run: str) -> str:
        return f"{tr.rate(folder, run, 'repaired'):.2f}"

    warp = (
        f"{twin(options, 'fashion-mnist-warp-lr3e-3')} / {twin(options, 'fashion-mnist-warp-head')}"
    )
    assert f"({twin(TWIN, 'fashion-mnist-warp')} -> {warp}%)" in text
    assert f"({twin(TWIN, 'mnist-warp')} -> {twin(options, 'mnist-warp-lr3e-3')}%)" in text
    assert f"({twin(TWIN, 'mnist-vignette')} -> {twin(options, 'mnist-vignette-head')}%)" in text
