"""Put another de-trigger AE into an existing model set, its target kept byte for byte.

    python -m training.swap_detrigger --model-set models/cifar10 --ae random

The AE is one of the dataset preset's autoencoders (training/config.py), reloaded from its
finished checkpoint in --run-dir/<dataset>/ or trained there first, exactly as `make reproduce`
trains it. The set's target.onnx is run as torch (training/nets/onnx_torch.py), so no target
checkpoint is needed and the target, its STRIP calibration and its audit stay valid. Then, as
`make reproduce` does for a new set: the pair is evaluated on the full test set, the decision is
calibrated and chosen on the clean validation split the set was made with (the manifest's
`training.target` names its size and seed), the AE is exported with the parity check, the decision
is re-run with ONNX Runtime over the full test set, and the manifest's `detrigger`, `decision`,
`evaluation` and `samples` are rewritten. What the set had before is kept in
`training.detrigger_swap.previous`; the full results go to
<--reports-dir>/<set name>/detrigger_swap.json, with a Markdown summary beside it. Beside a `make
reproduce` report.json, the reports README is rewritten too: its row is then the set as shipped.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from training import cli
from training.config import PRESETS, AEConfig, run_name
from training.data.datasets import load_dataset, split_train_val, to_float
from training.data.triggers import backdoor_pairs
from training.evaluation import set_export
from training.evaluation.evaluate import choose_decision_pairs, evaluate_pairs
from training.evaluation.markdown import pct, table
from training.evaluation.report import rule_text, write_readme
from training.evidence import hardware, versions
from training.fit.autoencoder import train_autoencoder
from training.nets.checkpoints import config_dict
from training.nets.export import export_and_check
from training.nets.manifest_file import sha256, write_manifest
from training.nets.onnx_torch import load_onnx_module

log = logging.getLogger("training.swap_detrigger")


class SwapError(ValueError):
    """The model set cannot take the AE: its manifest or files say why."""


def read_set(folder: Path) -> dict:
    """The set's manifest, after checking that its target is the file it names."""
    path = folder / "manifest.json"
    if not path.is_file():
        raise SwapError(f"{path} does not exist")
    manifest = json.loads(path.read_text())
    target = folder / manifest["target"]["file"]
    if sha256(target) != manifest["target"]["sha256"]:
        raise SwapError(f"{target} does not match the sha256 in {path}")
    if not backdoor_pairs(manifest):
        raise SwapError(f"{path} records no backdoor to evaluate the AE on")
    split = manifest.get("training", {}).get("target", {})
    if "val_size" not in split or "seed" not in split:
        raise SwapError(f"{path} records no validation split (training.target val_size, seed)")
    return manifest


def description(old: str, name: str, cfg) -> str:
    """The set's description with the new AE named in place of the old one."""
    head = old.split(" with the ")[0]
    return (
        f"{head} with the {name} de-trigger AE (Kwon, de-trigger autoencoder; {cfg.arch}, trained "
        f"on {cfg.triggers} triggers), put in by training.swap_detrigger"
    )


def summary_md(report: dict) -> str:
    """Before / after table of the headline numbers."""
    keys = (
        "clean_accuracy_after_ae",
        "detection_rate",
        "false_positive_rate",
        "auroc",
        "tpr_at_fpr0.01",
        "tpr_at_fpr0.05",
    )
    before, after = report["previous"]["evaluation"], report["evaluation"]
    lines = [
        f"# {report['model_set']}: de-trigger AE swapped for `{report['ae']}`",
        "",
        f"Written by `{report['command']}` ({report['wall_seconds']:.0f} s on "
        f"{report['hardware']}). The target is unchanged (sha256 "
        f"`{report['target_sha256'][:12]}`); the decision was calibrated for "
        f"{report['decision']['calibration']['target_fpr']:.0%} FPR on "
        f"{report['decision']['calibration']['n']} clean validation images, the numbers below are "
        f"on the full test set ({after['n_test']} clean, {after['n_positive']} triggered "
        "non-target images), the paper's trigger.",
        "",
    ]
    rows = [
        [
            "AE",
            f"{report['previous']['detrigger'].get('architecture', '?')} "
            f"(`{report['previous']['detrigger']['sha256'][:12]}`)",
            f"{report['ae']} (`{report['detrigger']['sha256'][:12]}`)",
        ],
        [
            "decision",
            rule_text(report["previous"]["decision"], 3),
            rule_text(report["decision"], 3),
        ],
    ]
    for k in keys:
        cells = ["-" if r.get(k) is None else f"{pct(r[k])}%" for r in (before, after)]
        rows.append([k.replace("_", " "), *cells])
    lines += table(["", "before", "after"], rows, right=True)
    return "\n".join(lines) + "\n"


def chosen_ae(manifest: dict, ae_name: str | None) -> tuple[str, str, AEConfig]:
    """(dataset, AE name, its config) for a set: the preset of the set's dataset and its
    `ae_name` AE (default: its shipped_ae), trained with this process's torch threads."""
    dataset = manifest["training"]["target"].get("dataset") or manifest["name"]
    if dataset not in PRESETS:
        raise SwapError(f"no preset for dataset {dataset!r}; presets: {', '.join(PRESETS)}")
    preset = PRESETS[dataset]
    ae_name = ae_name or preset.shipped_ae
    if ae_name not in preset.autoencoders:
        raise SwapError(
            f"the {dataset} preset has no AE {ae_name!r}; it has {', '.join(preset.autoencoders)}"
        )
    return dataset, ae_name, replace(preset.autoencoders[ae_name], threads=torch.get_num_threads())


def swap(
    folder: Path,
    ae_name: str | None,
    run_dir: Path,
    reports_dir: Path,
    data_dir: str | None,
    command: str,
) -> dict:
    """Put the preset's `ae_name` AE (default: its shipped_ae) into the set at `folder`; returns
    the report written to reports_dir/<set name>/detrigger_swap.json."""
    t0 = time.time()
    manifest = read_set(folder)
    dataset, ae_name, cfg = chosen_ae(manifest, ae_name)
    preset = PRESETS[dataset]
    split = manifest["training"]["target"]
    train = load_dataset(dataset, "train", data_dir)
    test = load_dataset(dataset, "test", data_dir)
    tr, va = split_train_val(len(train), int(split["val_size"]), int(split["seed"]))
    log.info("%s: %s AE from %s", folder, run_name(cfg), run_dir / dataset)
    ae = train_autoencoder(cfg, train.images[tr], run_dir / dataset, log.info)
    target = load_onnx_module(folder / manifest["target"]["file"]).eval()

    pairs = backdoor_pairs(manifest)
    test_x, val_x = to_float(test.images), to_float(train.images[va])
    fprs = tuple(sorted({*preset.calibration_fprs, preset.target_fpr}))
    evaluated = evaluate_pairs(
        target, ae, test_x, test.labels, val_x, train.labels[va], pairs, fprs, preset.confidence
    )
    results = [r for r, _ in evaluated]
    decision = choose_decision_pairs(results, preset.target_fpr)
    log.info("%s decision: %s", folder, decision)

    ae_file = manifest["detrigger"]["file"]
    ae_entry = export_and_check(
        ae, set_export.parity_batch(test_x, pairs), folder / ae_file, "images", "images_out"
    )
    checks = set_export.decision_checks(
        folder, test_x, test.labels, pairs, decision, [raw["logits"] for _, raw in evaluated]
    )
    log.info("%s ONNX Runtime on the test set: %s", folder, checks["onnx_runtime"])
    report_path = reports_dir / manifest["name"] / "detrigger_swap.json"
    previous = {k: manifest[k] for k in ("detrigger", "decision", "evaluation", "description")}
    ckpt = run_dir / dataset / f"detrigger_{run_name(cfg)}.ckpt"
    manifest.update(
        description=description(manifest["description"], ae_name, cfg),
        detrigger={**ae_entry, "architecture": cfg.arch},
        decision=decision,
        evaluation=set_export.set_evaluation(
            pairs,
            results,
            decision,
            preset.target_fpr,
            checks["onnx_runtime"],
            str(report_path),
        ),
        samples=checks["samples"],
    )
    machine = {"hardware": hardware(), "versions": versions()}
    manifest["training"]["detrigger_swap"] = {
        "ae": ae_name,
        "autoencoder": config_dict(cfg),
        "checkpoint": {"path": str(ckpt), "sha256": sha256(ckpt)},
        "command": command,
        **machine,
        "swapped": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "previous": previous,
    }
    # Detectors both and detrigger_or_repaired hold a de-trigger threshold set for the old AE:
    # drop them, and say how to calibrate each again for the new one.
    detectors = manifest.get("detectors") or {}
    repaired = detectors.get("repaired", {}).get("source", {}).get("model_set", "REPAIRED")
    again = {"both": f"--dataset {dataset}", "detrigger_or_repaired": f"--repaired {repaired}"}
    for name, option in again.items():
        if detectors.pop(name, None) is not None:
            log.info(
                "%s: detectors.%s dropped (set for the old AE); run detrigger-guard calibrate %s "
                "--recorded-split %s",
                folder,
                name,
                folder,
                option,
            )
    write_manifest(folder, manifest)
    if sha256(folder / manifest["target"]["file"]) != manifest["target"]["sha256"]:
        raise RuntimeError("the target changed during the swap")  # a bug, never the user's input

    report = {
        "model_set": str(folder),
        "dataset": dataset,
        "ae": ae_name,
        "autoencoder": config_dict(cfg),
        "target_sha256": manifest["target"]["sha256"],
        "detrigger": manifest["detrigger"],
        "decision": decision,
        "evaluation": manifest["evaluation"],
        "pairs": [
            {"target_class": k, "trigger": t.to_dict(), "results": r}
            for (t, k), r in zip(pairs, results, strict=True)
        ],
        "previous": previous,
        "command": command,
        "seed": int(split["seed"]),
        **machine,
        "wall_seconds": time.time() - t0,
    }
    write_report(report_path, report)
    log.info("%s: %s AE in place; report %s", folder, ae_name, report_path)
    return report


def write_report(report_path: Path, report: dict) -> None:
    """detrigger_swap.json and .md, and the reports README when the set has reproduce's report."""
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    report_path.with_suffix(".md").write_text(summary_md(report))
    if (report_path.parent / "report.json").is_file():  # beside reproduce's: its README too
        write_readme(report_path.parent.parent)


def main(argv: list[str] | None = None) -> dict:
    p = cli.parser(__doc__, "training.swap_detrigger")
    p.add_argument("--model-set", required=True, help="the model-set folder to change")
    p.add_argument(
        "--ae",
        default=None,
        help="which of the dataset preset's autoencoders (default: the preset's shipped_ae)",
    )
    cli.add_data_dir(p)
    p.add_argument(
        "--run-dir",
        default="runs",
        help="the AE's checkpoint is <run-dir>/<dataset>/detrigger_<name>.ckpt (default: runs)",
    )
    p.add_argument(
        "--reports-dir",
        default="reports",
        help="the results go to <reports-dir>/<set name>/detrigger_swap.json (default: reports)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cli.log_to(Path(args.run_dir) / "swap_detrigger.log")
    command = " ".join(["python -m training.swap_detrigger", *(argv or sys.argv[1:])])
    try:
        return swap(
            Path(args.model_set),
            args.ae,
            Path(args.run_dir),
            Path(args.reports_dir),
            args.data_dir,
            command,
        )
    except (SwapError, KeyError, json.JSONDecodeError) as e:
        p.error(f"--model-set {args.model_set}: {e}")


if __name__ == "__main__":
    main()
