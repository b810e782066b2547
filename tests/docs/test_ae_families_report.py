"""reports/ae-candidates/families and narrow: the READMEs' tables are the measurements that
training.ae_candidates wrote beside them (families: <dataset>.json, the plain quantile, and
confidence/<dataset>.json, the shipped sets' rule; narrow: mnist.json, the shipped rule), at the
precision the READMEs show; each demo set ships the graph its run measured."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean

import pytest

from tests.docs.mdparse import REPO, table

FOLDER = REPO / "reports" / "ae-candidates" / "families"
NARROW = REPO / "reports" / "ae-candidates" / "narrow"
# (the JSON, the first header cell's name for the dataset): the plain quantile's runs, then the
# runs at the shipped sets' rule; each JSON's tables are in the README of its folder (families'
# for confidence/)
RUNS = [
    *((FOLDER / f"{d}.json", d) for d in ("mnist", "fashion-mnist")),
    *(
        (FOLDER / "confidence" / f"{d}.json", f"{d}, confidence 0.95")
        for d in ("mnist", "fashion-mnist", "cifar10")
    ),
    (NARROW / "mnist.json", "mnist, narrow, confidence 0.95"),
]


def readme(path: Path) -> Path:
    folder = path.parent.parent if path.parent.name == "confidence" else path.parent
    return folder / "README.md"


def cell(kl: dict) -> str:
    return f"{100 * kl['detection_rate']:.2f} / {100 * kl['false_positive_rate']:.2f}"


@pytest.mark.parametrize(("path", "dataset"), RUNS, ids=[name for _, name in RUNS])
def test_the_tables_are_the_measurements(path: Path, dataset: str) -> None:
    report = json.loads(path.read_text())
    assert report["config"].get("confidence", 0.0) == (0.95 if "confidence" in dataset else 0.0)
    labels = [a["label"] for a in report["aes"]]
    header = [dataset, "attack success %", *labels]
    rows = table(readme(path), header)
    sets = report["sets"]
    assert [r[dataset] for r in rows] == [s["attack"] for s in sets] + ["mean / highest FPR"]
    for row, s in zip(rows, sets, strict=False):
        assert row["attack success %"] == f"{100 * s['attack_success_rate']:.2f}"
        for label in labels:
            assert row[label] == cell(s["aes"][label]["kl"]), (s["attack"], label)
    last = rows[-1]
    for label in labels:
        kls = [s["aes"][label]["kl"] for s in sets]
        detection = mean(k["detection_rate"] for k in kls)
        fpr = max(k["false_positive_rate"] for k in kls)
        assert last[label] == f"{100 * detection:.2f} / {100 * fpr:.2f}", label


@pytest.mark.parametrize(("path", "dataset"), RUNS, ids=[name for _, name in RUNS])
def test_the_equal_fpr_tables_are_the_measurements(path: Path, dataset: str) -> None:
    report = json.loads(path.read_text())
    labels = [a["label"] for a in report["aes"]]
    first = f"{dataset}, TPR at 1% test FPR"
    rows = table(readme(path), [first, *labels])
    sets = report["sets"]
    assert [r[first] for r in rows] == [s["attack"] for s in sets] + ["mean"]
    for label in labels:
        tprs = [s["aes"][label]["kl"]["tpr_at_fpr0.01"] for s in sets]
        shown = [f"{100 * t:.2f}" for t in tprs] + [f"{100 * mean(tprs):.2f}"]
        assert [r[label] for r in rows] == shown, label


@pytest.mark.parametrize(
    ("dataset", "run", "ae"),
    [
        ("mnist", NARROW / "mnist.json", "narrow"),
        ("fashion-mnist", FOLDER / "confidence" / "fashion-mnist.json", "stamped"),
        ("cifar10", FOLDER / "confidence" / "cifar10.json", "stamped"),
    ],
)
def test_the_shipped_ae_is_the_graph_measured_at_the_shipped_rule(
    dataset: str, run: Path, ae: str
) -> None:
    """Each demo set ships the AE that a run at the shipped rule measured, byte for byte (the
    MNIST one gated), so that run's table is the shipped guard's."""
    report = json.loads(run.read_text())
    (measured,) = [a for a in report["aes"] if a["label"].startswith(ae)]
    manifest = json.loads((REPO / "models" / dataset / "manifest.json").read_text())
    assert manifest["detrigger"]["sha256"] == measured["sha256"]
    assert manifest["training"]["detrigger_swap"]["ae"] == ae


@pytest.mark.parametrize(
    ("dataset", "labels"),
    [
        ("mnist", ["random-gated", "stamped-gated"]),
        ("fashion-mnist", ["random", "stamped"]),
        ("cifar10", ["random", "stamped"]),
    ],
)
def test_the_held_out_tables_are_the_measurements(dataset: str, labels: list[str]) -> None:
    """The SIG rows (a family no family set draws) are held-out/<dataset>.json's."""
    report = json.loads((FOLDER / "held-out" / f"{dataset}.json").read_text())
    header = [f"{dataset}, held out, confidence 0.95", "attack success %", *labels]
    (row,) = table(FOLDER / "README.md", header)
    (s,) = report["sets"]
    assert report["config"]["confidence"] == 0.95
    assert row[header[0]] == s["attack"] == "sig"
    assert row["attack success %"] == f"{100 * s['attack_success_rate']:.2f}"
    for label in labels:
        assert row[label] == cell(s["aes"][label]["kl"])
