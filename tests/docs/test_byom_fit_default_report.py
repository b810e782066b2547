"""reports/byom/fit-default: `detrigger-guard fit` with every default (issue 18's interface) on
backdoored models it never saw. The README's table is what bench.byom measure wrote in each
run's folder, each manifest is a set that fit made with no option but where to read and write,
and the prose, docs/byom.md and README.md quote those files."""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import asdict

from tests.docs import twin_reports as tr
from tests.docs.mdparse import REPO
from training.fit.twin import TwinConfig

FOLDER = REPO / "reports" / "byom" / "fit-default"
FUSED = "detrigger_or_repaired"


def test_the_table_is_the_measurements() -> None:
    tr.check_table(FOLDER)
    assert len(tr.runs(FOLDER)) >= 3


def test_each_run_is_a_set_that_fit_made_with_every_default() -> None:
    recipe = json.loads(json.dumps(asdict(TwinConfig())))  # as the manifest holds it
    for run in tr.runs(FOLDER):
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["detectors"]["default"] == FUSED, run.name
        repaired = manifest["detectors"]["repaired"]
        assert repaired["source"]["repair"]["config"] == recipe, run.name
        words = shlex.split(repaired["source"]["command"])
        assert words[:2] == ["detrigger-guard", "fit"], run.name
        options = {w for w in words[2:] if w.startswith("--")}
        assert options <= {"--target", "--data", "--out", "--run-dir"}, (run.name, options)
        repair = repaired["source"]["repair"]
        planned = TwinConfig().epochs * math.ceil(TwinConfig().images / TwinConfig().batch_size)
        assert repair["stopped_by_budget"] == (repair["steps"] < planned), run.name


def test_the_prose_and_the_docs_quote_the_measurements() -> None:
    texts = [
        " ".join(path.read_text().split())
        for path in (FOLDER / "README.md", REPO / "docs" / "byom.md")
    ]
    for run in tr.runs(FOLDER):
        name = run.name
        quoted = (
            f"{name}: {tr.rate(FOLDER, name, FUSED):.2f}% "
            f"({tr.rate(FOLDER, name, FUSED, 'detection_fired'):.2f}% of the attacks that "
            f"worked) at {tr.rate(FOLDER, name, FUSED, 'fpr_clean_test'):.2f}% clean FPR; the "
            f"twin alone {tr.rate(FOLDER, name, 'repaired'):.2f}% at "
            f"{tr.rate(FOLDER, name, 'repaired', 'fpr_clean_test'):.2f}%"
        )
        for text in texts:
            assert quoted in text, quoted


def test_the_span_over_the_hidden_backdoors_is_quoted() -> None:
    """The fused default's range over the hidden backdoors (not the demo patch), of the attacks
    that worked, in the report, the walkthrough and README.md."""
    hidden = [p.name for p in tr.runs(FOLDER) if not p.name.endswith("-demo")]
    fired = tr.span([tr.rate(FOLDER, r, FUSED, "detection_fired") for r in hidden])
    for path in (FOLDER / "README.md", REPO / "docs" / "byom.md", REPO / "README.md"):
        text = " ".join(path.read_text().split())
        assert f"{fired}% of the attacks that worked" in text, path


def test_the_cifar10_fits_time_is_its_logs_and_manifests() -> None:
    """The CIFAR-10 fit's minutes in all (fit's own last lines, kept in fit.log), its AE's and
    twin's seconds (the manifest's records), as the walkthrough and the report quote them."""
    run = FOLDER / "cifar10-sig"
    minutes = re.search(r"^fit: ([0-9.]+) minutes in all$", (run / "fit.log").read_text(), re.M)
    assert minutes is not None
    manifest = json.loads((run / "manifest.json").read_text())
    repair = manifest["detectors"]["repaired"]["source"]["repair"]
    walkthrough = " ".join((REPO / "docs" / "byom.md").read_text().split())
    quoted = (
        f"(the AE's 12 epochs in {manifest['training']['wall_seconds']:.0f} s, the twin's "
        f"{repair['steps']} steps in {repair['wall_seconds']:.0f} s) took {minutes[1]} minutes"
    )
    assert quoted in walkthrough, quoted
    assert not manifest["training"]["stopped_by_budget"] and not repair["stopped_by_budget"]
    report = " ".join((FOLDER / "README.md").read_text().split())
    assert f"took {minutes[1]} minutes" in report
