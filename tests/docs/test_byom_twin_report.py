"""reports/byom/twin: `fit --twin` on backdoors whose trigger the AE cannot undo, and on the demo
targets; the README's table is what bench.byom measure wrote in each run's folder, and each
folder's manifest is a set that fit --twin made with its defaults."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from tests.docs.mdparse import REPO, table
from tests.docs.test_byom_report import shown
from training.fit.twin import TwinConfig

TWIN = REPO / "reports" / "byom" / "twin"
COLUMNS = [
    "run",
    "attack success %",
    "detector",
    "clean FPR % [95% CI] (k/n)",
    "detection % [95% CI] (k/n)",
    "of the attacks that worked %",
]
DETECTORS = ["detrigger", "repaired", "detrigger_or_repaired"]


def runs() -> list[Path]:
    """The runs with fit --twin's defaults (options/ holds runs with other recipes)."""
    return sorted(p for p in TWIN.iterdir() if p.is_dir() and p.name != "options")


def test_the_table_is_the_measurements() -> None:
    rows = table(TWIN / "README.md", COLUMNS)
    assert sorted({r["run"] for r in rows}) == [p.name for p in runs()]
    for run in runs():
        assert [r["detector"] for r in rows if r["run"] == run.name] == DETECTORS
    for row in rows:
        measured = json.loads((TWIN / row["run"] / f"measure-{row['detector']}.json").read_text())
        assert measured["detector"] == row["detector"]
        assert row["attack success %"] == f"{100 * measured['attack_success']:.2f}"
        assert row["clean FPR % [95% CI] (k/n)"] == shown(measured["fpr_clean_test"])
        assert row["detection % [95% CI] (k/n)"] == shown(measured["detection_triggered_test"])
        fired = measured["detection_fired"]["rate"]
        assert row["of the attacks that worked %"] == f"{100 * fired:.2f}"


def test_each_run_is_a_set_that_fit_twin_made_with_its_defaults() -> None:
    for run in runs():
        manifest = json.loads((run / "manifest.json").read_text())
        repaired = manifest["detectors"]["repaired"]
        assert repaired["source"]["repair"]["method"] == "fine-tune", run.name
        # runs made before TwinConfig had reinit_head ran without it, its default
        config = {"reinit_head": False, **repaired["source"]["repair"]["config"]}
        assert config == asdict(TwinConfig()), run.name
        assert "--twin" in repaired["source"]["command"].split(), run.name
        # the repaired graph's threshold is set on the held-out images as they are
        assert "shifted" not in repaired["calibration"]["source"], run.name
        assert "shifted by up to 2 px" in manifest["decision"]["calibration"]["source"], run.name


def _range(values: list[float], digits: int = 2) -> str:
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def test_the_prose_quotes_the_measurements() -> None:
    """The ranges the README's findings quote, over the runs whose trigger the AE misses (the
    hidden ones) and the demo controls."""
    text = " ".join((TWIN / "README.md").read_text().split())

    def m(run: str, detector: str) -> dict:
        return json.loads((TWIN / run / f"measure-{detector}.json").read_text())

    hidden = [p.name for p in runs() if not p.name.endswith("-demo")]
    missed = [r for r in hidden if m(r, "detrigger")["detection_triggered_test"]["rate"] < 0.1]
    ae = [100 * m(r, "detrigger")["detection_triggered_test"]["rate"] for r in missed]
    twin = [100 * m(r, "repaired")["detection_triggered_test"]["rate"] for r in hidden]
    fpr = [100 * m(r, "repaired")["fpr_clean_test"]["rate"] for r in hidden]
    fired = [100 * m(r, "repaired")["detection_fired"]["rate"] for r in hidden]
    assert (
        f"The AE alone passes the warps, the vignette and CIFAR-10's grating ({_range(ae)}%)"
        in (text)
    )
    assert f"The twin flags {_range(twin)}% of them at {_range(fpr)}% clean FPR" in text
    assert f"(of the attacks that worked: {_range(fired)}%)" in text
    losses = [
        100 * m(r, "repaired")["detection_triggered_test"]["rate"]
        - 100 * m(r, "detrigger_or_repaired")["detection_triggered_test"]["rate"]
        for r in hidden
    ]
    assert f"loses {_range(losses, 0)} points against the twin alone" in text
    for run in (p.name for p in runs() if p.name.endswith("-demo")):
        ae_alone = 100 * m(run, "detrigger")["detection_triggered_test"]["rate"]
        fused = 100 * m(run, "detrigger_or_repaired")["detection_triggered_test"]["rate"]
        assert f"{ae_alone:.2f} -> {fused:.2f}" in text and round(ae_alone - fused, 2) <= 0.2
    agreement = {
        p.name: 100
        * json.loads((p / "manifest.json").read_text())["detectors"]["repaired"]["source"][
            "repair"
        ]["val_agreement"]
        for p in runs()
    }
    for prefix, label in (("fashion-mnist", "there"), ("mnist", "on MNIST")):
        values = [v for k, v in agreement.items() if k.startswith(prefix + "-")]
        assert f"{_range(values)}% agreement with the target {label}" in text or (
            f"{_range(values)}% {label}" in text
        )


def test_the_walkthrough_and_readme_quote_the_measurements() -> None:
    """docs/byom.md's table (detection at clean FPR, each detector) and README's sentence."""
    first = "run"
    columns = [first, "detrigger", "repaired (the twin)", "detrigger_or_repaired"]
    rows = table(REPO / "docs" / "byom.md", columns)
    assert {r[first] for r in rows} == {p.name for p in runs()}
    for row in rows:
        for column, detector in zip(columns[1:], DETECTORS, strict=True):
            m = json.loads((TWIN / row[first] / f"measure-{detector}.json").read_text())
            rate, fpr = m["detection_triggered_test"]["rate"], m["fpr_clean_test"]["rate"]
            assert row[column] == f"{100 * rate:.2f} at {100 * fpr:.2f}", (row[first], column)
    hidden = [p.name for p in runs() if not p.name.endswith("-demo")]

    def rate(run: str, detector: str) -> float:
        m = json.loads((TWIN / run / f"measure-{detector}.json").read_text())
        return 100 * m["detection_triggered_test"]["rate"]

    readme = " ".join((REPO / "README.md").read_text().split())
    twin = _range([rate(r, "repaired") for r in hidden])
    ae = _range([rate(r, "detrigger") for r in hidden])
    assert f"it flags {twin}% where the AE flags {ae}%" in readme
    walkthrough = " ".join((REPO / "docs" / "byom.md").read_text().split())
    passed = 100 - rate("fashion-mnist-warp", "repaired")
    assert f"Fashion-MNIST's warp keeps {passed:.0f}% of its triggered images unseen" in walkthrough


def test_the_twin_times_quoted_are_the_recorded_ones() -> None:
    def seconds(run: Path) -> float:
        manifest = json.loads((run / "manifest.json").read_text())
        return manifest["detectors"]["repaired"]["source"]["repair"]["wall_seconds"]

    small = [seconds(p) for p in runs() if not p.name.startswith("cifar10")]
    (cifar,) = [seconds(p) for p in runs() if p.name == "cifar10-sig"]
    quoted = f"{min(small):.0f}-{max(small):.0f} s"
    for page in (TWIN / "README.md", REPO / "docs" / "byom.md"):
        text = " ".join(page.read_text().split())
        assert quoted in text and f"{cifar:,.0f} s" in text, page.name


def test_the_patch_controls_are_quoted_from_their_files() -> None:
    text = " ".join((TWIN / "README.md").read_text().split())

    def twin(run: str) -> float:
        m = json.loads((TWIN / run / "measure-repaired.json").read_text())
        return 100 * m["detection_triggered_test"]["rate"]

    survived = _range([twin("mnist-demo"), twin("fashion-mnist-demo")])
    assert f"(the twin flags {survived}% of the patched images)" in text
    assert f"lost most of it ({twin('cifar10-demo'):.2f}%)" in text
    manifest = json.loads((TWIN / "cifar10-demo" / "manifest.json").read_text())
    seconds = manifest["detectors"]["repaired"]["source"]["repair"]["wall_seconds"]
    assert f"{seconds:,.0f} s (cifar10-demo)" in text


def test_the_other_recipes_table_is_the_measurements() -> None:
    options = TWIN / "options"
    columns = [COLUMNS[0], "twin recipe", *COLUMNS[2:]]
    rows = table(TWIN / "README.md", columns)
    assert {r["run"] for r in rows} == {p.name for p in options.iterdir() if p.is_dir()}
    for row in rows:
        folder = options / row["run"]
        config = json.loads((folder / "manifest.json").read_text())["detectors"]["repaired"]
        config = {"reinit_head": False, **config["source"]["repair"]["config"]}
        recipe = f"lr {config['lr']:g}" + (", head afresh" if config["reinit_head"] else "")
        assert row["twin recipe"] == recipe
        assert {**config, "lr": 1e-3, "reinit_head": False} == asdict(TwinConfig())  # one change
        measured = json.loads((folder / f"measure-{row['detector']}.json").read_text())
        assert row["clean FPR % [95% CI] (k/n)"] == shown(measured["fpr_clean_test"])
        assert row["detection % [95% CI] (k/n)"] == shown(measured["detection_triggered_test"])
        assert (
            row["of the attacks that worked %"]
            == f"{100 * measured['detection_fired']['rate']:.2f}"
        )
    text = " ".join((TWIN / "README.md").read_text().split())

    def twin(folder: Path) -> str:
        m = json.loads((folder / "measure-repaired.json").read_text())
        return f"{100 * m['detection_triggered_test']['rate']:.2f}"

    assert (
        f"({twin(TWIN / 'fashion-mnist-warp')} -> {twin(options / 'fashion-mnist-warp-lr3e-3')} / "
        f"{twin(options / 'fashion-mnist-warp-head')}%)" in text
    )
    assert f"({twin(TWIN / 'mnist-warp')} -> {twin(options / 'mnist-warp-lr3e-3')}%)" in text
    assert f"({twin(TWIN / 'mnist-vignette')} -> {twin(options / 'mnist-vignette-head')}%)" in text
