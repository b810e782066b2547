"""The detection comparison report (issue 7): every attack of the suite x every per-input
detector on one dataset, from one command.

    python -m training.detection_report --dataset mnist \\
        --ae paper=runs/mnist/detrigger_conv.onnx --ae improved=models/mnist/detrigger.onnx

Model sets: the shipped one (--shipped, default models/<dataset>: the paper's trigger,
`badnets-white`) and every attack of the suite file found under --suite-dir/<dataset>/<attack>/
(written by `python -m training.suite`); or exactly the folders of --sets. Attacks of the suite
with no set are listed as missing.

Detectors, all run with ONNX Runtime on the CPU provider (training/evaluation/detectors.py), so
passes and milliseconds are those of the deployable path:
- for each de-trigger AE (--ae LABEL=PATH; default `paper=set`, each set's own detrigger.onnx):
  the paper's class-change rule, and the KL score with its threshold set on clean validation
  images for --target-fpr (at least --kl-floor);
- STRIP (service/strip.py, the service's own code) with --strip-n copies, its bank drawn from
  the validation split as STRIP's calibration draws it, and its threshold set on the other
  validation images for the same --target-fpr.
`--ae LABEL@ATTACK=PATH` gives an AE to one attack's set only (the audit-based AE, trained with
that set's synthesised triggers); a label given for some sets is "not run" on the others.

Positives: the test images whose true class is not a pair's target class, with that pair's
trigger stamped on (a two-target set: each pair's, and pooled); negatives: the clean test
images. Validation images are the target's held-out split (the manifest's
training.validation_split), never the test split, so the FPR measured on test shows whether the
calibration holds.

Writes --out/<dataset>.json (every number, the command, seed, hardware, versions, wall time),
--out/<dataset>.md, --out/<dataset>/roc.png, example grids of missed positives under
--out/<dataset>/, and --out/README.md from every dataset's json (training/detection_tables.py;
`python -m training.detection_tables` rewrites the Markdown and ROC plots from the jsons alone).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from training import cli, evidence
from training.data.attack_suite import DEFAULT_SUITE, SuiteError, load_suite
from training.data.datasets import DATASETS, load_dataset
from training.evaluation.comparison import (
    OWN_AE,
    AESpec,
    CompareOptions,
    Data,
    evaluate_set,
    find_sets,
)
from training.evaluation.detection import MIN_THRESHOLD
from training.evaluation.detection_markdown import (
    FPR_GRID,
    write_dataset,
    write_readme,
)

# --- re-running some sets -------------------------------------------------------------------
UPDATE_MUST_MATCH = ("dataset", "seed", "config", "fpr_grid")


def example_files(entries: list[dict]) -> set[str]:
    return {m["examples"] for e in entries for m in e["misses"] if m.get("examples")}


def report_to_update(out: Path, new: dict) -> dict:
    """The report in out/<dataset>.json that `new` (at least its UPDATE_MUST_MATCH keys) may
    update; exits when there is none or it was made with other settings. The suite file's path
    (it depends on the checkout) and the thread count (an execution detail) may differ."""
    path = out / f"{new['dataset']}.json"
    if not path.is_file():
        raise SystemExit(f"--update: no report at {path} to update; run without --update first")
    old = json.loads(path.read_text())

    def settings(r: dict) -> dict:
        return {k: r.get(k) for k in UPDATE_MUST_MATCH} | {
            "config": {k: v for k, v in r["config"].items() if k not in ("suite", "threads")}
        }

    differ = [k for k in UPDATE_MUST_MATCH if settings(old)[k] != settings(new)[k]]
    if differ:
        raise SystemExit(
            f"--update: {path} was made with another {', '.join(differ)} than this run; "
            "re-run the whole report instead"
        )
    return old


def updated(out: Path, new: dict) -> dict:
    """The report in out/<dataset>.json with `new`'s sets in place of its sets of the same
    attacks (appended when it had none), and the re-run recorded under `updates`. Refuses a report
    made with other settings: its numbers would not be comparable. Example grids of the replaced
    sets that the new ones no longer name are removed."""
    old = report_to_update(out, new)
    fresh = {e["attack"]: e for e in new["sets"]}
    kept = {e["attack"] for e in old["sets"]}
    sets = [fresh.get(e["attack"], e) for e in old["sets"]]
    sets += [e for e in new["sets"] if e["attack"] not in kept]
    replaced = [e for e in old["sets"] if e["attack"] in fresh]
    for stale in example_files(replaced) - example_files(new["sets"]):
        (out / stale).unlink(missing_ok=True)
    run = {k: new[k] for k in ("command", "hardware", "versions", "wall_seconds", "created")}
    return {
        **old,
        "sets": sets,
        "missing": [m for m in old["missing"] if m not in fresh],
        "updates": [*old.get("updates", []), {"attacks": sorted(fresh), **run}],
    }


# --- the command ------------------------------------------------------------------------------
def add_set_options(p: argparse.ArgumentParser) -> None:
    """Which model sets are compared, and on which data."""
    p.add_argument(
        "--dataset",
        default="mnist",
        choices=DATASETS,
        help="the data the sets take (default: mnist)",
    )
    cli.add_data_dir(p)
    p.add_argument(
        "--shipped",
        default="",
        help="the shipped set, the paper's trigger (default: models/<dataset>; unused with --sets)",
    )
    p.add_argument(
        "--suite-dir",
        default="runs/suite",
        help="where training.suite wrote <dataset>/<attack>/ (default: runs/suite)",
    )
    p.add_argument(
        "--sets",
        default="",
        help="comma-separated model-set folders, each optionally ATTACK=FOLDER, instead of "
        "--shipped and --suite-dir (default: none)",
    )
    p.add_argument(
        "--suite",
        default=str(DEFAULT_SUITE),
        help="suite file (default: training/attacks/suite.json)",
    )


def add_detector_options(p: argparse.ArgumentParser) -> None:
    """The detectors and how their thresholds are set."""
    p.add_argument(
        "--ae",
        action="append",
        default=[],
        help="a de-trigger AE: LABEL=PATH (every set) or LABEL@ATTACK=PATH (one set); PATH an "
        "ONNX file or 'set' (the set's own detrigger.onnx). Table 7 reads the labels paper, "
        "improved and audit. Repeatable (default: paper=set)",
    )
    p.add_argument(
        "--strip-n",
        type=int,
        default=16,
        help="STRIP's copies per input; 0 = no STRIP (default: 16)",
    )
    p.add_argument(
        "--bank-size",
        type=int,
        default=64,
        help="validation images in STRIP's bank, as make reproduce draws it (default: 64)",
    )
    p.add_argument(
        "--target-fpr",
        type=float,
        default=0.01,
        help="share of clean validation images each threshold may flag (default: 0.01)",
    )
    p.add_argument(
        "--kl-floor",
        type=float,
        default=MIN_THRESHOLD["kl"],
        help="lowest KL threshold, so that float rounding flags nothing (default: "
        f"{MIN_THRESHOLD['kl']})",
    )
    p.add_argument(
        "--goal",
        type=float,
        default=0.9,
        help="detection rate under which a (detector, attack) is analysed as a miss (default: 0.9)",
    )


def add_run_options(p: argparse.ArgumentParser) -> None:
    """How many images, how fast, with which seed, and where the report goes."""
    p.add_argument(
        "--examples", type=int, default=6, help="missed positives shown per miss (default: 6)"
    )
    p.add_argument(
        "--val-images",
        type=int,
        default=0,
        help="validation images the thresholds are set on; 0 = every one not in the STRIP bank "
        "(default: 0)",
    )
    p.add_argument(
        "--val-size",
        type=int,
        default=5000,
        help="held-out images drawn when a manifest records no validation split (default: 5000)",
    )
    p.add_argument(
        "--test-images",
        type=int,
        default=0,
        help="clean test images (a seeded random subset; positives are drawn from them); "
        "0 = the full test set (default: 0)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="inputs per call (default: 64)")
    p.add_argument(
        "--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default: 1)"
    )
    p.add_argument("--seed", type=int, default=0, help="STRIP bank and draws, subsets (default: 0)")
    p.add_argument(
        "--out", default="reports/detection", help="report folder (default: reports/detection)"
    )
    p.add_argument(
        "--update",
        action="store_true",
        help="re-run only the sets found (e.g. --sets ATTACK=FOLDER) and put them into the "
        "existing --out/<dataset>.json in place of the same attacks; the other sets stay as they "
        "were. The run's settings must equal that report's (default: write a whole report)",
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = cli.parser(__doc__, "training.detection_report")
    add_set_options(p)
    add_detector_options(p)
    add_run_options(p)
    args = p.parse_args(argv)
    try:
        args.ae_specs = [AESpec.parse(s) for s in args.ae]
    except ValueError as e:
        p.error(str(e))
    if not any(s.label == "paper" for s in args.ae_specs):
        args.ae_specs.insert(0, AESpec("paper", None, OWN_AE))
    if not 0.0 < args.target_fpr < 0.5:
        p.error(f"--target-fpr {args.target_fpr} must lie in (0, 0.5)")
    if not 0 <= args.strip_n <= min(256, args.bank_size):
        p.error(f"--strip-n {args.strip_n} must lie in 0..256 and be at most --bank-size")
    if args.batch_size < 1 or args.examples < 0 or args.test_images < 0 or args.val_images < 0:
        p.error("--batch-size must be >= 1; --examples, --test-images, --val-images >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    t0 = time.time()
    try:
        suite = load_suite(Path(args.suite))
    except SuiteError as e:
        raise SystemExit(str(e)) from e
    train = load_dataset(args.dataset, "train", args.data_dir)
    test = load_dataset(args.dataset, "test", args.data_dir)
    test_idx = np.arange(len(test))
    if 0 < args.test_images < len(test):
        test_idx = np.sort(
            np.random.default_rng(args.seed).permutation(len(test))[: args.test_images]
        )
    data = Data(train, test, test_idx)
    sets, missing = find_sets(args, suite, tuple(test.images.shape[1:]))
    if not sets:
        raise SystemExit("no model set found: see --shipped, --suite-dir and --sets")
    config = {
        "target_fpr": args.target_fpr,
        "kl_floor": args.kl_floor,
        "strip_n": args.strip_n,
        "strip_bank": args.bank_size,
        "goal": args.goal,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "test_images": int(len(test_idx)),
        "test_set_size": int(len(data.test)),
        "suite": str(args.suite),
        "aes": [{"label": s.label, "attack": s.attack, "path": s.path} for s in args.ae_specs],
    }
    if args.update:  # before the run, not after it
        probe = {"dataset": args.dataset, "seed": args.seed, "config": config}
        report_to_update(Path(args.out), probe | {"fpr_grid": list(FPR_GRID)})
    # Every option of the same name, but the AEs' KL thresholds stay at the plain quantile
    # (confidence 0, CompareOptions' default), as this report's committed runs set them.
    fields = [f for f in CompareOptions.__dataclass_fields__ if f != "confidence"]
    opts = CompareOptions(**{f: getattr(args, f) for f in fields})
    entries = []
    for attack, folder in sets:
        print(f"{args.dataset} / {attack}: {folder}", flush=True)
        entries.append(evaluate_set(attack, folder, args.ae_specs, data, opts))
    report = {
        "dataset": args.dataset,
        "command": " ".join(
            ["python -m training.detection_report", *(sys.argv[1:] if argv is None else argv)]
        ),
        "seed": args.seed,
        "hardware": evidence.onnx_hardware(args.threads),
        "versions": evidence.versions(evidence.ONNX_PACKAGES),
        "config": config,
        "fpr_grid": list(FPR_GRID),
        "sets": entries,
        "missing": missing,
        "wall_seconds": round(time.time() - t0, 1),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.update:
        report = updated(out, report)
    (out / f"{args.dataset}.json").write_text(json.dumps(report, indent=2) + "\n")
    write_dataset(out, report)
    write_readme(out)
    print(f"{out / (args.dataset + '.md')} written ({time.time() - t0:.0f} s)")
    return report


if __name__ == "__main__":
    main()
