"""What reports/byom/twin and reports/byom/twin-plain share: a table per run and detector of
what bench.byom measure wrote in each run's folder, and a set that fit made with one twin
recipe in each run's manifest."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from tests.docs.mdparse import table
from tests.docs.test_byom_report import shown
from training.fit.twin import TwinConfig

COLUMNS = [
    "run",
    "attack success %",
    "detector",
    "clean FPR % [95% CI] (k/n)",
    "detection % [95% CI] (k/n)",
    "of the attacks that worked %",
]
DETECTORS = ["detrigger", "repaired", "detrigger_or_repaired"]


def runs(folder: Path) -> list[Path]:
    """The runs of the report's recipe (options/ holds runs with other recipes)."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "options")


def measured(folder: Path, run: str, detector: str) -> dict:
    return json.loads((folder / run / f"measure-{detector}.json").read_text())


def rate(folder: Path, run: str, detector: str, key: str = "detection_triggered_test") -> float:
    """A measured rate, in %."""
    return 100 * measured(folder, run, detector)[key]["rate"]


def span(values: list[float], digits: int = 2) -> str:
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def check_rows(folder: Path, rows: list[dict[str, str]]) -> None:
    """Each row's cells against the run's measure file (the `run` and `detector` columns)."""
    for row in rows:
        m = measured(folder, row["run"], row["detector"])
        assert m["detector"] == row["detector"]
        assert row["clean FPR % [95% CI] (k/n)"] == shown(m["fpr_clean_test"])
        assert row["detection % [95% CI] (k/n)"] == shown(m["detection_triggered_test"])
        fired = m["detection_fired"]["rate"]
        assert row["of the attacks that worked %"] == f"{100 * fired:.2f}"
        if "attack success %" in row:
            assert row["attack success %"] == f"{100 * m['attack_success']:.2f}"


def check_table(folder: Path) -> None:
    rows = table(folder / "README.md", COLUMNS)
    assert sorted({r["run"] for r in rows}) == [p.name for p in runs(folder)]
    for run in runs(folder):
        assert [r["detector"] for r in rows if r["run"] == run.name] == DETECTORS
    check_rows(folder, rows)


def check_sets(folder: Path, recipe: TwinConfig) -> None:
    """Each run's manifest: a set fit made with its twin of ``recipe`` (a field a record lacks
    was the recipe's: it did not exist yet)."""
    for run in runs(folder):
        manifest = json.loads((run / "manifest.json").read_text())
        repaired = manifest["detectors"]["repaired"]
        assert repaired["source"]["repair"]["method"] == "fine-tune", run.name
        config = {**asdict(recipe), **repaired["source"]["repair"]["config"]}
        assert config == asdict(recipe), run.name
        assert "--twin" in repaired["source"]["command"].split(), run.name
        # the repaired graph's threshold is set on the held-out images as they are
        assert "shifted" not in repaired["calibration"]["source"], run.name
        assert "shifted by up to 2 px" in manifest["decision"]["calibration"]["source"], run.name


def repair_records(folder: Path) -> dict[str, dict]:
    """Each run's twin record (recipe, losses, time, agreement)."""
    return {
        p.name: json.loads((p / "manifest.json").read_text())["detectors"]["repaired"]["source"][
            "repair"
        ]
        for p in runs(folder)
    }


def check_hidden_findings(folder: Path, text: str, hidden: list[str]) -> None:
    """The findings a report's prose quotes over its hidden backdoors: what the AE passes, what
    the twin flags and at what FPR, and what the fused detector loses against the twin."""
    missed = [r for r in hidden if rate(folder, r, "detrigger") < 10]
    ae = span([rate(folder, r, "detrigger") for r in missed])
    assert f"The AE alone passes the warps, the vignette and CIFAR-10's grating ({ae}%)" in text
    twin = span([rate(folder, r, "repaired") for r in hidden])
    fpr = span([rate(folder, r, "repaired", "fpr_clean_test") for r in hidden])
    assert f"The twin flags {twin}% of them at {fpr}% clean FPR" in text
    fired = span([rate(folder, r, "repaired", "detection_fired") for r in hidden])
    assert f"(of the attacks that worked: {fired}%)" in text
    fused = "detrigger_or_repaired"
    losses = [rate(folder, r, "repaired") - rate(folder, r, fused) for r in hidden]
    assert f"loses {span(losses, 0)} points against the twin alone" in text


def twin_seconds(folder: Path) -> tuple[str, str]:
    """The twins' fine-tune times as quoted: MNIST-sized runs, CIFAR-10 runs (ranges)."""
    records = repair_records(folder)
    small = [r["wall_seconds"] for k, r in records.items() if not k.startswith("cifar10")]
    cifar = [r["wall_seconds"] for k, r in records.items() if k.startswith("cifar10")]
    return f"{min(small):.0f}-{max(small):.0f} s", f"{min(cifar):,.0f}-{max(cifar):,.0f} s"
