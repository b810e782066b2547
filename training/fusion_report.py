"""Detector both beside each detector alone, on the test split of each shipped set:

    python -m training.fusion_report                       # models/mnist, fashion-mnist, cifar10

For each set (its dataset is the one its manifest's training records), every image runs once
through the guard's own code (contract.fusion: AE(x), then one target call on [x; AE(x);
STRIP's copies]), and three decisions are read off the same numbers with the thresholds the
manifest ships: detrigger (``decision``), strip (``detectors.strip``) and both
(``detectors.both``), and on a set that has one, detector repaired (``detectors.repaired``: the
target against its repaired copy, which runs on the same images). Measured: the clean FPR on
the test images, and the detection rate of the set's own trigger (from its manifest) on the
test images of the other classes, each with its exact 95% interval, and the trigger's attack
success.

Writes reports/fusion/fusion.json, reports/fusion/README.md and the table in docs/fusion.md
(between its markers). The test split is never used for calibration. --clean-images and
--triggered-images take a seeded subset (for CIFAR-10 on a small CPU); the report says so.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contract.manifest import read_manifest
from training import cli, evidence
from training.data.datasets import load_dataset
from training.data.triggers import Trigger, manifest_backdoors
from training.evaluation import onepass
from training.evaluation.markdown import pct, replace_block, table
from training.evaluation.metrics import rate

DETECTORS = ("detrigger", "strip", "both")  # every set measured has these
OPTIONAL = ("repaired", "detrigger_or_repaired")  # measured on the sets whose manifest has them
DOCS = Path("docs/fusion.md")
BEGIN = "<!-- fusion table: written by python -m training.fusion_report -->"
END = "<!-- end of fusion table -->"
COLUMNS = ["set", "detector", "rule", "clean FPR % [95% CI]", "detection % [95% CI]"]
SHIPPED = ("models/mnist", "models/fashion-mnist", "models/cifar10")
SHIPPED_NOTE = (
    "the shipped sets' own triggers only: the attack suite's models (runs/) are not on this "
    "machine, so the suite-wide comparison is not measured here"
)


def parse_args(argv: Sequence[str] | None):
    p = cli.parser(__doc__, "training.fusion_report")
    p.add_argument(
        "--model-set",
        action="append",
        default=None,
        help="a model set with detectors.both (repeatable; default: models/mnist, "
        "models/fashion-mnist, models/cifar10)",
    )
    cli.add_data_dir(p)
    onepass.add_options(p)
    p.add_argument(
        "--out", default="reports/fusion", help="report folder (default: reports/fusion)"
    )
    p.add_argument(
        "--docs",
        default=str(DOCS),
        help=f"page whose table block is rewritten; '' = none (default: {DOCS})",
    )
    args = p.parse_args(argv)
    onepass.check_options(p, args)
    args.model_set = args.model_set or list(SHIPPED)
    return args


def flags(folder: Path, images: np.ndarray, args, transform=None) -> dict[str, np.ndarray]:
    """uint8 images (N, C, H, W) -> per detector (N,) bool flags, and the class on x."""
    manifest = read_manifest(folder)
    if manifest.detectors.strip is None or manifest.detectors.both is None:
        raise SystemExit(
            f"{folder}: no detectors.both; run detrigger-guard calibrate {folder} --recorded-split"
        )
    lx, lae, h = onepass.outputs(folder, manifest, images, args.batch_size, args.threads, transform)
    lr = onepass.repaired_outputs(
        folder, manifest, images, args.batch_size, args.threads, transform
    )
    return {**onepass.decisions(manifest, lx, lae, h, lr), "predicted": lx.argmax(axis=1)}


def detectors_of(s: dict[str, Any]) -> list[str]:
    """The detectors a measured set has figures for, in the report's order."""
    return [d for d in DETECTORS + OPTIONAL if d in s["false_positive"]]


def measure_set(folder: Path, args) -> dict[str, Any]:
    t0 = time.time()
    raw = json.loads((folder / "manifest.json").read_text())
    manifest = read_manifest(folder)
    dataset = raw["training"]["target"]["dataset"]
    test = load_dataset(dataset, "test", args.data_dir)
    clean_idx = onepass.subset(len(test), args.clean_images, args.seed)
    clean = flags(folder, test.images[clean_idx], args)
    result: dict[str, Any] = {
        "model_set": str(folder),
        "name": manifest.name,
        "dataset": dataset,
        "split": "test",
        "clean_images": int(len(clean_idx)),
        "clean_images_of": int(len(test)),
        "clean_accuracy": float((clean["predicted"] == test.labels[clean_idx]).mean()),
        "rules": onepass.rules(manifest),
        "calibrated_for": calibrated_for(manifest),
        "false_positive": {d: rate(clean[d]) for d in DETECTORS + OPTIONAL if d in clean},
        "triggers": [],
    }
    for attack in manifest_backdoors(raw):
        target_class = int(attack.get("target_class", 0))
        others = np.flatnonzero(test.labels != target_class)
        chosen = others[onepass.subset(len(others), args.triggered_images, args.seed)]
        triggered = flags(folder, test.images[chosen], args, Trigger(**attack["trigger"]))
        result["triggers"].append(
            {
                "target_class": target_class,
                "trigger": attack["trigger"],
                "images": int(len(chosen)),
                "images_of": int(len(others)),
                "attack_success_rate": float((triggered["predicted"] == target_class).mean()),
                "detection": {d: rate(triggered[d]) for d in DETECTORS + OPTIONAL if d in clean},
            }
        )
    result["wall_seconds"] = round(time.time() - t0, 1)
    return result


def calibrated_for(manifest) -> dict[str, dict[str, float | None]]:
    """Per detector, the target FPR and confidence its calibration records (confidence 0: the
    plain quantile, also for records from before issue 22, which have none)."""
    specs = {
        "detrigger": manifest.decision,
        "strip": manifest.detectors.strip,
        "both": manifest.detectors.both,
        "repaired": manifest.detectors.repaired,
        "detrigger_or_repaired": manifest.detectors.detrigger_or_repaired,
    }
    out = {}
    for d, spec in specs.items():
        if d in OPTIONAL and spec is None:
            continue
        cal = spec.calibration if spec is not None else None
        out[d] = {
            "target_fpr": cal.target_fpr if cal else None,
            "confidence": (cal.confidence or 0.0) if cal else None,
        }
    return out


def calibration_sentence(report: dict[str, Any]) -> str:
    """What the thresholds were calibrated for, set by set, from the report's records."""
    parts = []
    for s in report["sets"]:
        recorded = s.get("calibrated_for")
        if not recorded:
            continue
        seen = {(c["target_fpr"], c["confidence"]) for c in recorded.values()}
        if len(seen) != 1:
            parts.append(f"{Path(s['model_set']).name} per detector (see fusion.json)")
            continue
        ((fpr, conf),) = seen
        rule = f"at confidence {conf:g}" if conf else "by the plain quantile"
        target = f"{pct(fpr)}% FPR" if fpr else "an unrecorded FPR"
        parts.append(f"{Path(s['model_set']).name} for {target} {rule}")
    if not parts:  # a report from before the records: its sets were all set for 1%
        return "calibrated for 1% FPR on the validation split"
    return "calibrated on the validation split: " + "; ".join(parts)


def cell(r: dict[str, Any]) -> str:
    lo, hi = r["ci95"]
    return f"{pct(r['rate'])} [{pct(lo)}, {pct(hi)}]"


def table_lines(report: dict[str, Any]) -> list[str]:
    """The docs' table: one row per set (per trigger where a set has several) and detector."""
    rows = []
    for s in report["sets"]:
        for label, trigger in onepass.triggers_of(s):
            for d in detectors_of(s):
                detection = cell(trigger["detection"][d]) if trigger else "no trigger recorded"
                fp = cell(s["false_positive"][d])
                rows.append([label, d, f"`{s['rules'][d]}`", fp, detection])
    return table(COLUMNS, rows)


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Per dataset and detector, over every trigger of its sets: the mean detection, the lowest
    (and whose), and the highest clean FPR of its sets."""
    rows = []
    for dataset in dict.fromkeys(s["dataset"] for s in report["sets"]):
        sets = [s for s in report["sets"] if s["dataset"] == dataset]
        found = [(label, t) for s in sets for label, t in onepass.triggers_of(s) if t is not None]
        for d in dict.fromkeys(d for s in sets for d in detectors_of(s)):
            rates = [
                (t["detection"][d]["rate"], label) for label, t in found if d in t["detection"]
            ]
            fpr = max(s["false_positive"][d]["rate"] for s in sets if d in s["false_positive"])
            if rates:
                low, who = min(rates)
                mean = pct(sum(r for r, _ in rates) / len(rates))
                rows.append([dataset, d, len(rates), mean, f"{pct(low)} ({who})", pct(fpr)])
    header = ["dataset", "detector", "triggers", "mean detection %", "lowest %", "highest FPR %"]
    return table(header, rows)


def readme(report: dict[str, Any], folder: Path) -> list[str]:
    """The report's page, to be written in `folder` (its link to the docs is relative)."""
    page = Path(__file__).resolve().parents[1] / DOCS  # the repository's docs, from any cwd
    docs = Path(os.path.relpath(page, folder.resolve())).as_posix()
    scope = "each shipped set" if report.get("shipped_only", True) else "each set"
    optional = any(d in s["false_positive"] for s in report["sets"] for d in OPTIONAL)
    every = "every detector" if optional else "all three"
    lines = [
        "# Detector both beside each detector alone",
        "",
        f"Test split of {scope}; the thresholds its manifest ships "
        f"({every} {calibration_sentence(report)}). Detection: the set's own trigger on the "
        "test images of the other classes. Intervals: exact (Clopper-Pearson) 95%. Written by "
        f"`python -m training.fusion_report`; [docs/fusion.md]({docs}) says how "
        "both is built and calibrated.",
        "",
        *table_lines(report),
        "",
        *summary_lines(report),
        "",
        *onepass.images_lines(report),
    ]
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    lines += [
        "",
        "## Evidence",
        "",
        f"- command: `{report['command']}`",
        f"- seed: {report['seed']}",
        f"- hardware: {report['hardware']}",
        f"- versions: {versions}",
        f"- commit: {report['commit']}",
        f"- wall time: {report['wall_seconds']:.0f} s",
        *([f"- note: {report['note']}"] if report.get("note") else []),
    ]
    return lines


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shipped_only = set(args.model_set) <= set(SHIPPED)
    sets = []
    for folder in map(Path, args.model_set):
        cli.require_model_set(folder)
        sets.append(measure_set(folder, args))
        print(f"{folder}: {json.dumps(sets[-1]['false_positive'])}", flush=True)
    report = {
        "sets": sets,
        "command": " ".join(["python -m training.fusion_report", *(argv or sys.argv[1:])]),
        "seed": args.seed,
        "hardware": evidence.onnx_hardware(args.threads),
        "versions": evidence.versions(evidence.ONNX_PACKAGES),
        "commit": evidence.git_commit("."),
        "wall_seconds": round(time.time() - t0, 1),
        "shipped_only": shipped_only,
        "note": SHIPPED_NOTE if shipped_only else None,
    }
    (out / "fusion.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "README.md").write_text("\n".join(readme(report, out)) + "\n")
    if args.docs:
        replace_block(Path(args.docs), BEGIN, END, table_lines(report))
    print("\n".join(table_lines(report)))
    return report


if __name__ == "__main__":
    main()
