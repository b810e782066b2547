"""reports/byom/twin: fit's twin with the feature-shift recipe (a fresh final layer turned away
from the target's; fit's default then, before the universal perturbation) on backdoors whose
trigger the AE cannot undo, and on the demo targets; the README's table is what bench.byom
measure wrote in each run's folder, each folder's manifest is a set that fit made with that
recipe, and the prose, docs/byom.md and README.md quote those files."""

from __future__ import annotations

from dataclasses import replace

from tests.docs import twin_reports as tr
from tests.docs.mdparse import REPO, table
from training.fit.twin import TwinConfig

TWIN = REPO / "reports" / "byom" / "twin"
PLAIN = REPO / "reports" / "byom" / "twin-plain"  # the first recipe, on the same models


def rate(run: str, detector: str, key: str = "detection_triggered_test") -> float:
    return tr.rate(TWIN, run, detector, key)


def hidden() -> list[str]:
    return [p.name for p in tr.runs(TWIN) if not p.name.endswith("-demo")]


def demos() -> list[str]:
    return [p.name for p in tr.runs(TWIN) if p.name.endswith("-demo")]


def test_the_table_is_the_measurements() -> None:
    tr.check_table(TWIN)
    assert [p.name for p in tr.runs(TWIN)] == [p.name for p in tr.runs(PLAIN)]


def test_each_run_is_a_set_that_fit_made_with_the_fst_recipe() -> None:
    """fit's default before the universal perturbation joined it (--twin-adversarial 0)."""
    tr.check_sets(TWIN, replace(TwinConfig(), adversarial=0.0))


def test_the_prose_quotes_the_measurements() -> None:
    fused_name = "detrigger_or_repaired"
    text = " ".join((TWIN / "README.md").read_text().split())
    tr.check_hidden_findings(TWIN, text, hidden())
    for run in tr.runs(TWIN):  # against the plain fine-tune, run by run
        before, after = tr.rate(PLAIN, run.name, "repaired"), rate(run.name, "repaired")
        assert f"{run.name} {before:.2f} -> {after:.2f}" in text
    for run in demos():
        ae_alone, fused = rate(run, "detrigger"), rate(run, "detrigger_or_repaired")
        assert f"{ae_alone:.2f} -> {fused:.2f}" in text and round(ae_alone - fused, 2) <= 0.2
    fused, ae = (rate("cifar10-demo", d, "fpr_clean_test") for d in (fused_name, "detrigger"))
    assert f"(the last at {fused:.2f}% clean FPR instead of {ae:.2f}%)" in text
    assert all(quoted in text for quoted in tr.twin_seconds(TWIN))
    records = tr.repair_records(TWIN)
    for prefix, label in (("fashion", "Fashion-MNIST"), ("mnist", "MNIST"), ("cifar", "CIFAR-10")):
        values = [100 * r["val_agreement"] for k, r in records.items() if k.startswith(prefix)]
        assert f"{tr.span(values)}% on {label}" in text


def test_the_walkthrough_and_readme_quote_the_measurements() -> None:
    """docs/byom.md's table (detection at clean FPR, each detector) and README's sentence."""
    first = "run"
    columns = [first, "detrigger", "repaired (the twin)", "detrigger_or_repaired"]
    rows = table(REPO / "docs" / "byom.md", columns)
    assert {r[first] for r in rows} == {p.name for p in tr.runs(TWIN)}
    for row in rows:
        for column, detector in zip(columns[1:], tr.DETECTORS, strict=True):
            cell = f"{rate(row[first], detector):.2f} at "
            cell += f"{rate(row[first], detector, 'fpr_clean_test'):.2f}"
            assert row[column] == cell, (row[first], column)
    readme = " ".join((REPO / "README.md").read_text().split())
    twin = tr.span([rate(r, "repaired") for r in hidden()])
    ae = tr.span([rate(r, "detrigger") for r in hidden()])
    assert f"it flags {twin}% where the AE flags {ae}%" in readme
    walkthrough = " ".join((REPO / "docs" / "byom.md").read_text().split())
    passed = 100 - rate("fashion-mnist-warp", "repaired")
    assert f"Fashion-MNIST's warp keeps {passed:.0f}% of its triggered images unseen" in walkthrough
    assert all(quoted in walkthrough for quoted in tr.twin_seconds(TWIN))
