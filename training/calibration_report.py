"""Does a set calibrated for a target FPR measure at most that FPR on its test split? (issue 22)

    python -m training.calibration_report [--baseline 4697f93]

For each model set (default: models/mnist, models/fashion-mnist, models/cifar10), its
thresholds now (its manifest) and, with --baseline, at that git revision (the same file there),
on the same test images: every image runs once through the guard's own code (contract.fusion: AE(x),
then one target call on [x; AE(x); STRIP's copies]) and each manifest's three decisions are
read off the same numbers: detrigger (``decision``), strip and both. Measured, each with its
exact (Clopper-Pearson) 95% interval: the clean FPR on the test images, and the detection rate
(TPR) of the set's own trigger on the test images of the other classes. Beside them, what each
threshold's calibration records (training/evaluation/metrics.py): target FPR, confidence, the
n validation images and the k allowed past the threshold, and the FPR on those images.

With --baseline, the two manifests must share their graphs and STRIP's bank, copies and draws
(only thresholds differ); the test split is never used to set anything. Writes
--out/calibration.json and --out/README.md, with the issue's goals for the paper's trigger and a
table of how many calibration images a confidence needs and what it costs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contract.manifest import Manifest, read_manifest
from training import cli, evidence
from training.data.datasets import load_dataset
from training.data.triggers import Trigger, manifest_backdoors
from training.evaluation import onepass
from training.evaluation.markdown import pct, table
from training.evaluation.metrics import (
    DEFAULT_CONFIDENCE,
    allowed_exceedances,
    clopper_pearson,
    min_calibration_images,
    rate,
)

DETECTORS = ("detrigger", "strip", "both")
# Issue 22's goal for the paper's trigger: TPR at least `tpr` at a measured test FPR at most `fpr`.
GOALS = {
    "mnist": {"tpr": 0.995, "fpr": 0.005},
    "fashion-mnist": {"tpr": 0.98, "fpr": 0.01},
    "cifar10": {"tpr": 0.96, "fpr": 0.01},
}
IMAGE_COUNTS = (300, 1000, 2000, 5000, 10000, 20000, 50000)


def parse_args(argv: Sequence[str] | None):
    p = cli.parser(__doc__, "training.calibration_report")
    p.add_argument(
        "--model-set",
        action="append",
        default=None,
        help="a model set folder inside this repository (repeatable; default: models/mnist, "
        "models/fashion-mnist, models/cifar10)",
    )
    p.add_argument(
        "--baseline",
        default=None,
        help="git revision whose manifests hold the thresholds to compare with, e.g. the "
        "commit before a re-calibration (default: none, the manifests now only)",
    )
    cli.add_data_dir(p)
    onepass.add_options(p)
    p.add_argument(
        "--out",
        default="reports/calibration",
        help="report folder (default: reports/calibration)",
    )
    args = p.parse_args(argv)
    onepass.check_options(p, args)
    args.model_set = args.model_set or ["models/mnist", "models/fashion-mnist", "models/cifar10"]
    return args


# --- the two manifests ----------------------------------------------------------------------
def git_manifest(folder: Path, rev: str) -> dict[str, Any]:
    """The set's manifest.json as it was at git revision `rev`."""
    try:
        text = subprocess.run(
            ["git", "show", f"{rev}:./manifest.json"],
            cwd=folder,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"{folder}: no manifest.json at {rev}: {exc.stderr.strip()}") from exc
    return json.loads(text)


def same_scores(before: Manifest, after: Manifest) -> list[str]:
    """What differs between two manifests besides thresholds: the graphs, the decision's score,
    and what STRIP's entropy depends on. Empty when one pass serves both."""
    out = []
    for role in ("target", "detrigger"):
        if getattr(before, role).sha256 != getattr(after, role).sha256:
            out.append(f"{role}.sha256")
    if before.decision.score != after.decision.score:
        out.append("decision.score")
    s0, s1 = before.detectors.strip, after.detectors.strip
    if (s0 is None) != (s1 is None):
        out.append("detectors.strip")
    elif s0 is not None and s1 is not None:
        for field in ("n", "seed"):
            if getattr(s0, field) != getattr(s1, field):
                out.append(f"detectors.strip.{field}")
        if s0.bank.sha256 != s1.bank.sha256:
            out.append("detectors.strip.bank.sha256")
        if s0.blend != s1.blend:
            out.append("detectors.strip.blend")
    b0, b1 = before.detectors.both, after.detectors.both
    if b0 is not None and b1 is not None and b0.score != b1.score:
        out.append("detectors.both.score")
    return out


# --- one pass, every decision ---------------------------------------------------------------
def calibration_of(manifest: Manifest, detector: str) -> dict[str, Any]:
    """What a detector's calibration record says: target FPR, confidence (0: plain quantile,
    also for records from before issue 22), n, k allowed, and the FPR on those images."""
    spec = {
        "detrigger": manifest.decision,
        "strip": manifest.detectors.strip,
        "both": manifest.detectors.both,
    }[detector]
    cal = spec.calibration if spec is not None else None
    if cal is None:
        return {}
    extra = cal.model_extra or {}
    out: dict[str, Any] = {
        "target_fpr": cal.target_fpr,
        "confidence": cal.confidence or 0.0,
        "n": cal.n,
    }
    if cal.n and cal.target_fpr:
        out["allowed_exceedances"] = (
            cal.allowed_exceedances
            if cal.allowed_exceedances is not None
            else allowed_exceedances(cal.n, cal.target_fpr, 0.0)
        )
    if cal.false_positive is not None:
        out["false_positive"] = cal.false_positive.model_dump(include={"rate", "k", "n", "ci95"})
        out["false_positive"]["ci95"] = list(out["false_positive"]["ci95"])
    elif isinstance(extra.get("false_positive_rate"), float) and cal.n:
        # STRIP's records before issue 22 give the share only: k is its count on n.
        k = round(extra["false_positive_rate"] * cal.n)
        out["false_positive"] = {
            "rate": k / cal.n,
            "k": k,
            "n": cal.n,
            "ci95": list(clopper_pearson(k, cal.n)),
        }
    if "selected_on" in extra and "false_positive" not in out:
        out["note"] = "set by make reproduce with torch; the FPR on those images is not recorded"
    return out


def measure_set(folder: Path, args) -> dict[str, Any]:
    t0 = time.time()
    raw = json.loads((folder / "manifest.json").read_text())
    manifests = {}
    if args.baseline:
        manifests["before"] = Manifest.model_validate(git_manifest(folder, args.baseline))
    manifests["after"] = read_manifest(folder)
    if args.baseline and (differ := same_scores(manifests["before"], manifests["after"])):
        raise SystemExit(
            f"{folder}: the manifest at {args.baseline} differs in {', '.join(differ)}: its "
            "thresholds belong to other scores, so one pass cannot serve both"
        )
    dataset = raw["training"]["target"]["dataset"]
    test = load_dataset(dataset, "test", args.data_dir)
    clean_idx = onepass.subset(len(test), args.clean_images, args.seed)
    after = manifests["after"]
    if after.detectors.strip is None:
        raise SystemExit(f"{folder}: no detectors.strip to measure")
    clean = onepass.outputs(folder, after, test.images[clean_idx], args.batch_size, args.threads)
    result: dict[str, Any] = {
        "model_set": str(folder),
        "dataset": dataset,
        "split": "test",
        "clean_images": int(len(clean_idx)),
        "clean_images_of": int(len(test)),
        "clean_accuracy": float((clean[0].argmax(1) == test.labels[clean_idx]).mean()),
        "goal": GOALS.get(dataset),
        "thresholds": {},
        "triggers": [],
    }
    triggered = []
    for attack in manifest_backdoors(raw):
        target_class = int(attack.get("target_class", 0))
        others = np.flatnonzero(test.labels != target_class)
        chosen = others[onepass.subset(len(others), args.triggered_images, args.seed)]
        out = onepass.outputs(
            folder,
            after,
            test.images[chosen],
            args.batch_size,
            args.threads,
            Trigger(**attack["trigger"]),
        )
        triggered.append(out)
        result["triggers"].append(
            {
                "target_class": target_class,
                "trigger": attack["trigger"],
                "images": int(len(chosen)),
                "images_of": int(len(others)),
                "attack_success_rate": float((out[0].argmax(1) == target_class).mean()),
            }
        )
    for which, manifest in manifests.items():
        fp = onepass.decisions(manifest, *clean)
        tp = [onepass.decisions(manifest, *t) for t in triggered]
        result["thresholds"][which] = {
            "rules": onepass.rules(manifest),
            "detectors": {
                d: {
                    "calibration": calibration_of(manifest, d),
                    "false_positive": rate(fp[d]),
                    "detection": [rate(t[d]) for t in tp],
                }
                for d in DETECTORS
                if d in fp
            },
        }
    result["wall_seconds"] = round(time.time() - t0, 1)
    return result


# --- what a confidence costs ----------------------------------------------------------------
def image_counts(fprs: Sequence[float], confidence: float) -> list[dict[str, Any]]:
    """For each count of calibration images and target FPR: the k allowed at `confidence`, the
    share k / n (what the rule aims at), and the exact 95% interval of an FPR measured as k / n
    on n images (how tightly the calibration images pin it)."""
    out = []
    for n in IMAGE_COUNTS:
        row: dict[str, Any] = {"n": n}
        for f in fprs:
            k = allowed_exceedances(n, f, confidence)
            row[f"{f:g}"] = {
                "allowed_exceedances": k,
                "share": k / n if k >= 0 else None,
                "ci95": list(clopper_pearson(k, n)) if k >= 0 else None,
            }
        out.append(row)
    return out


# --- Markdown -------------------------------------------------------------------------------
def cell(r: dict[str, Any] | None) -> str:
    if not r:
        return "-"
    lo, hi = r["ci95"]
    return f"{pct(r['rate'])} [{pct(lo)}, {pct(hi)}]"


def calibration_cell(c: dict[str, Any]) -> str:
    if not c:
        return "-"
    conf = "quantile" if not c.get("confidence") else f"c={c['confidence']:g}"
    k = c.get("allowed_exceedances")
    head = f"{pct(c['target_fpr'])}%, {conf}, k <= {k} of {c['n']}" if c.get("n") else conf
    return head


def verdict(target: float | None, fp: dict[str, Any]) -> str:
    """'yes' when the measured test FPR is at most the target; '(CI too)' when its upper 95%
    bound is as well."""
    if target is None:
        return "-"
    if fp["rate"] > target:
        return f"no (+{pct(fp['rate'] - target)})"
    return "yes, CI too" if fp["ci95"][1] <= target else "yes"


def goal_cell(s: dict[str, Any], r: dict[str, Any]) -> str:
    g = s.get("goal")
    if not g or not r["detection"]:
        return "-"
    fp, tp = r["false_positive"]["rate"], r["detection"][0]["rate"]
    misses = []
    if fp > g["fpr"]:
        misses.append(f"FPR {pct(fp - g['fpr'])} over")
    if tp < g["tpr"]:
        misses.append(f"TPR {pct(g['tpr'] - tp)} under")
    return "holds" if not misses else "misses: " + ", ".join(misses)


COLUMNS = [
    "set",
    "detector",
    "thresholds",
    "rule",
    "calibration (target, rule, k allowed of n)",
    "validation FPR % [95% CI]",
    "test FPR % [95% CI]",
    "test FPR <= target",
    "paper trigger TPR % [95% CI]",
    "issue 22 goal",
]


def table_lines(report: dict[str, Any]) -> list[str]:
    rows = []
    for s in report["sets"]:
        name = Path(s["model_set"]).name
        for d in DETECTORS:
            for which, t in s["thresholds"].items():
                if d not in t["detectors"]:
                    continue
                r = t["detectors"][d]
                c = r["calibration"]
                rows.append(
                    [
                        name,
                        d,
                        which if report["baseline"] else "now",
                        f"`{t['rules'][d]}`",
                        calibration_cell(c),
                        cell(c.get("false_positive")),
                        cell(r["false_positive"]),
                        verdict(c.get("target_fpr"), r["false_positive"]),
                        cell(r["detection"][0]) if r["detection"] else "-",
                        goal_cell(s, r),
                    ]
                )
    return table(COLUMNS, rows)


def counts_lines(report: dict[str, Any]) -> list[str]:
    fprs = report["image_counts"]["fprs"]
    header = ["calibration images n"]
    for f in fprs:
        header += [f"{pct(f)}%: k allowed", f"{pct(f)}%: k / n % [95% CI]"]
    rows = []
    for r in report["image_counts"]["rows"]:
        line: list[object] = [r["n"]]
        for f in fprs:
            c = r[f"{f:g}"]
            if c["allowed_exceedances"] < 0:
                line += ["none", "too few images"]
            else:
                lo, hi = c["ci95"]
                line += [
                    c["allowed_exceedances"],
                    f"{pct(c['share'])} [{pct(lo)}, {pct(hi)}]",
                ]
        rows.append(line)
    return table(header, rows)


def readme(report: dict[str, Any]) -> list[str]:
    conf = report["image_counts"]["confidence"]
    need = ", ".join(
        f"{min_calibration_images(f, conf)} at {pct(f)}%" for f in report["image_counts"]["fprs"]
    )
    lines = [
        "# Calibration on the test split (issue 22)",
        "",
        "Does a set calibrated for a target FPR measure at most that FPR on its test split? Each "
        + (
            "shipped set's thresholds before (its manifest at git "
            f"{report['baseline']}) and after (its manifest now), on the same test images"
            if report["baseline"]
            else "shipped set's thresholds (its manifest now), on its test images"
        )
        + ": clean FPR, and detection (TPR) of the set's own trigger on the test images of the "
        "other classes, with exact (Clopper-Pearson) 95% intervals. Thresholds are set on the "
        "validation split only (training images the target and AE never trained on). Written by "
        "`python -m training.calibration_report`; the rule is in "
        "[docs/model-contract.md](../../docs/model-contract.md#calibration).",
        "",
        "Calibration: `quantile` is the plain empirical quantile (at most floor(target x n) of "
        "the n validation images flagged), which lands above the target on new images about half "
        "the time; `c=0.95` lets at most k of them past the threshold, k the largest count with "
        "BinomCDF(k; n, target) <= 0.05, so that the FPR on new clean images is at most the "
        "target with probability >= 0.95. `test FPR <= target`: `yes` when the measured test "
        "FPR is at most the target, `yes, CI too` when its upper 95% bound is as well. Issue "
        "22's goal for the paper's trigger: TPR >= 99.5 / 98 / 96% at a test FPR <= 0.5 / 1 / "
        "1% (MNIST / Fashion-MNIST / CIFAR-10).",
        "",
        *table_lines(report),
        "",
        *onepass.images_lines(report),
    ]
    lines += [
        "",
        "## How many calibration images",
        "",
        f"At confidence {conf:g}, n validation images let k of them past the threshold; k / n "
        "is the FPR the threshold aims at, below the target by the margin the confidence "
        "costs, and its interval is how tightly n images pin an FPR measured there. Computed, "
        f"not measured. The fewest images that allow any threshold: {need}. The shipped sets "
        "have 5,000 validation images (4,936 for STRIP and both, less the bank); more would "
        "need clean images that neither the target nor the AE trained on, which the shipped "
        "sets do not have outside the test split.",
        "",
        *counts_lines(report),
        "",
    ]
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    load = report["load_average"]
    lines += [
        "## Evidence",
        "",
        f"- command: `{report['command']}`",
        f"- seed: {report['seed']}",
        f"- hardware: {report['hardware']}",
        f"- versions: {versions}",
        f"- commit: {report['commit']}"
        + (f" (thresholds before: {report['baseline']})" if report["baseline"] else ""),
        f"- load average (1 min) before and after: {load['before']:.2f}, {load['after']:.2f}",
        f"- wall time: {report['wall_seconds']:.0f} s",
        f"- note: {report['note']}",
    ]
    return lines


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    t0 = time.time()
    load_before = os.getloadavg()[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = []
    for folder in map(Path, args.model_set):
        cli.require_model_set(folder)
        sets.append(measure_set(folder, args))
        print(f"{folder}: {json.dumps(sets[-1]['thresholds'], default=str)[:400]}", flush=True)
    baseline = (
        args.baseline
        and subprocess.run(
            ["git", "rev-parse", "--short", args.baseline],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    fprs = sorted({g["fpr"] for g in GOALS.values()}, reverse=True)
    report = {
        "sets": sets,
        "baseline": baseline,
        "image_counts": {
            "confidence": DEFAULT_CONFIDENCE,
            "fprs": fprs,
            "rows": image_counts(fprs, DEFAULT_CONFIDENCE),
        },
        "command": " ".join(["python -m training.calibration_report", *(argv or sys.argv[1:])]),
        "seed": args.seed,
        "hardware": evidence.onnx_hardware(args.threads),
        "versions": evidence.versions(evidence.ONNX_PACKAGES),
        "commit": evidence.git_commit("."),
        "load_average": {"before": load_before, "after": os.getloadavg()[0]},
        "wall_seconds": round(time.time() - t0, 1),
        "note": "the shipped sets' own triggers only: the attack suite's models (runs/) are not "
        "on this machine",
    }
    (out / "calibration.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "README.md").write_text("\n".join(readme(report)) + "\n")
    print("\n".join(table_lines(report)))
    return report


if __name__ == "__main__":
    main()
