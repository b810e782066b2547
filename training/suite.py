"""Train the attack suite's target models for one dataset and export each as a model set (issue 7,
item 2). The attacks come from a suite file (default training/attacks/suite.json, see
training/data/attack_suite.py); each is trained with the dataset's preset (training/config.py),
only the poisoning changed, then paired with the preset's de-trigger AE, evaluated on the full test
set, calibrated on the clean validation split and exported with the parity check.

    python -m training.suite --dataset mnist                        # every attack
    python -m training.suite --dataset mnist --attacks blend,noise  # some
    python -m training.suite --dataset cifar10 --init-from runs/cifar10-clean/target.ckpt
    python -m training.suite --dataset cifar10 --init-from models/cifar10-clean/target.onnx

Model sets go to --out/<dataset>/<attack>/ (manifest `backdoor` describes the attack), the full
results to --out/<dataset>/reports/<attack>.json, a table of all attacks run so far to
--out/<dataset>/summary.md. Checkpoints go to --run-dir/<dataset>/suite/<attack>/, so an
interrupted run resumes; the AE is the one `make reproduce` trains (--run-dir/<dataset>/), reused
when finished, or (--ae-triggers random, with --ae-exclude / --ae-epochs as given to it) the
random-trigger AE of training.train_detrigger; an AE not trained yet is trained first.

Fine-tuning (--init-from): every attack starts from the weights of an existing target checkpoint
of the preset's architecture and is trained on its poisoned data for a few epochs (default 2, at
a tenth of the preset's learning rate) instead of from scratch. The threat model is then a
backdoor injected by fine-tuning: the attacker takes a trained model (a downloaded or outsourced
one) and fine-tunes it on poisoned data. A clean checkpoint (training.audit.control) is the
honest start; the demo target (runs/<dataset>/target.ckpt) already carries the white-square
backdoor, which fine-tuning will mostly keep. A `.onnx` start (the shipped clean control's
target.onnx) needs no checkpoint: the graph is fine-tuned as torch (training.train_target).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from training import cli
from training.config import (
    AE_TRIGGERS,
    PRESETS,
    AEConfig,
    Preset,
    TargetConfig,
    run_name,
    with_triggers,
)
from training.data.attack_suite import DEFAULT_SUITE, Attack, SuiteError, load_suite, select
from training.data.datasets import DATASETS, load_dataset, split_train_val, to_float
from training.evaluation import set_export
from training.evaluation.evaluate import choose_decision_pairs, evaluate_pairs
from training.evaluation.markdown import table
from training.evidence import hardware, versions
from training.fit.autoencoder import train_autoencoder
from training.fit.target import train_target
from training.nets.manifest_file import sha256, write_manifest

FINETUNE_EPOCHS = 2
FINETUNE_LR_SCALE = 0.1
log = logging.getLogger("training.suite")


def attack_config(
    base: TargetConfig,
    attack: Attack,
    init_from: str | None = None,
    epochs: int | None = None,
    lr: float | None = None,
) -> TargetConfig:
    """The preset's target config with the poisoning of `attack` (resolved for the dataset's
    image size): one pair in `trigger` / `target_class` as the shipped sets have it, several in
    `attack` (the first also in `trigger` / `target_class`). With init_from, a fine-tuning run."""
    cfg = copy.deepcopy(base)
    trigger, target_class = attack.backdoors[0]
    cfg.poison_rate = attack.poison_rate
    cfg.trigger = trigger.to_dict()
    cfg.target_class = target_class
    if len(attack.backdoors) > 1:
        cfg.attack = [{"target_class": k, "trigger": t.to_dict()} for t, k in attack.backdoors]
    if init_from:
        cfg.init_from = str(init_from)
        cfg.epochs = FINETUNE_EPOCHS
        cfg.lr = base.lr * FINETUNE_LR_SCALE
    if epochs:
        cfg.epochs = epochs
    if lr:
        cfg.lr = lr
    return cfg


def shown(path: Path) -> str:
    """`path` relative to the working directory when it lies under it (the repository root,
    for evidence that does not name one machine's folders), else as given."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def evaluate_attack(
    dataset: str,
    attack: Attack,
    target: torch.nn.Module,
    ae: torch.nn.Module,
    data: dict,
    pairs: list,
) -> tuple[list, dict]:
    """(evaluate_pairs' (results, raw) per pair, the decision chosen over all pairs), with
    thresholds calibrated on the validation images for the preset's FPRs."""
    preset = PRESETS[dataset]
    val_y = data["train"].labels[data["va"]]
    fprs = tuple(sorted({*preset.calibration_fprs, preset.target_fpr}))
    evaluated = evaluate_pairs(
        target,
        ae,
        data["test_x"],
        data["test"].labels,
        data["val_x"],
        val_y,
        pairs,
        fprs,
        preset.confidence,
    )
    results = [r for r, _ in evaluated]
    decision = choose_decision_pairs(results, preset.target_fpr)
    for (_, k), r in zip(pairs, results, strict=True):
        log.info(
            "%s / %s, target %d: clean acc %.4f, ASR %.4f, class-change detection %.4f at FPR %.4f",
            dataset,
            attack.name,
            k,
            r["clean_accuracy"],
            r["attack_success_rate"],
            r["test"]["class_change"]["detection_rate"],
            r["test"]["class_change"]["false_positive_rate"],
        )
    return evaluated, decision


def training_record(
    preset: Preset,
    cfg: TargetConfig,
    ae_cfg: AEConfig,
    attack: Attack,
    n_val: int,
    suite_file: Path,
) -> dict:
    """The manifest's and the report's `training`: configs, suite attack, fine-tuning source."""
    return {
        "seed": cfg.seed,
        "target": asdict(cfg),
        "autoencoder": asdict(ae_cfg),
        "normalisation": {"mean": preset.mean, "std": preset.std},
        "validation_split": {"n": int(n_val), "from": "training data"},
        "suite": {
            "attack": attack.name,
            "description": attack.description,
            "file": shown(suite_file),
            "sha256": sha256(suite_file),
        },
        "init_from": None
        if not cfg.init_from
        else {"path": cfg.init_from, "sha256": sha256(Path(cfg.init_from))},
        "command": " ".join(["python -m training.suite", *sys.argv[1:]]),
        "hardware": hardware(),
    }


def summary_row(
    out: Path, ae_cfg: AEConfig, cfg: TargetConfig, decision: dict, pairs: list, evaluation: dict
) -> dict:
    """One attack's row of summary.json."""
    return {
        "model_set": str(out),
        "ae": run_name(ae_cfg),
        "init_from": cfg.init_from,
        "decision": "class_change"
        if decision["rule"] == "class_change"
        else f"{decision['score']} > {decision['threshold']:.3g}",
        "pairs": [
            {"target_class": k, **{m: e[m] for m in SUMMARY_METRICS}}
            for (_, k), e in zip(pairs, evaluation.get("attacks", [evaluation]), strict=True)
        ],
    }


def run_attack(
    dataset: str,
    attack: Attack,
    data: dict,
    ae: torch.nn.Module,
    ae_cfg: AEConfig,
    args: argparse.Namespace,
) -> dict:
    """Train, evaluate and export one attack; returns its summary row."""
    t0 = time.time()
    preset = PRESETS[dataset]
    train, test, tr, va = data["train"], data["test"], data["tr"], data["va"]
    _, h, w = test.images.shape[1:]
    attack = attack.resolved(int(h), int(w), len(test.classes))
    cfg = attack_config(preset.target, attack, args.init_from, args.epochs, args.lr)
    cfg.threads = args.threads
    log.info("%s / %s: %s", dataset, attack.name, attack.description)
    target = train_target(
        cfg,
        train.images[tr],
        train.labels[tr],
        preset.mean,
        preset.std,
        Path(args.run_dir) / dataset / "suite" / attack.name,
        log.info,
    )
    pairs = list(attack.backdoors)
    evaluated, decision = evaluate_attack(dataset, attack, target, ae, data, pairs)
    results = [r for r, _ in evaluated]

    out = Path(args.out) / dataset / attack.name
    exported = set_export.export_model_set(
        out,
        target,
        ae,
        data["test_x"],
        test.labels,
        pairs,
        decision,
        [raw["logits"] for _, raw in evaluated],
    )
    report_path = Path(args.out) / dataset / "reports" / f"{attack.name}.json"
    evaluation = set_export.set_evaluation(
        pairs, results, decision, preset.target_fpr, exported["onnx_runtime"], str(report_path)
    )
    training = training_record(preset, cfg, ae_cfg, attack, len(va), Path(args.suite))
    manifest = set_export.manifest(
        f"{dataset}-{attack.name}",
        f"Attack suite: {attack.description} {cfg.arch} target"
        f"{' fine-tuned from ' + cfg.init_from if cfg.init_from else ''}, "
        f"{run_name(ae_cfg)} de-trigger AE",
        test.images.shape[1:],
        list(test.classes),
        exported,
        cfg.arch,
        ae_cfg.arch,
        decision,
        set_export.backdoor_entry(pairs, attack.poison_rate),
        evaluation,
        training,
        versions(),
    )
    write_manifest(out, manifest)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "dataset": dataset,
        "attack": attack.name,
        "model_set": str(out),
        "decision": decision,
        "pairs": [
            {"target_class": k, "trigger": t.to_dict(), "results": r}
            for (t, k), r in zip(pairs, results, strict=True)
        ],
        "onnx_runtime": exported["onnx_runtime"],
        "training": training,
        "versions": versions(),
        "wall_seconds": time.time() - t0,
    }
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    log.info("%s / %s: model set written to %s", dataset, attack.name, out)
    return summary_row(out, ae_cfg, cfg, decision, pairs, evaluation)


SUMMARY_METRICS = (
    "clean_accuracy",
    "attack_success_rate",
    "detection_rate",
    "false_positive_rate",
    "auroc",
)


def write_summary(folder: Path, rows: dict[str, dict]) -> None:
    """Merge `rows` into folder/summary.json and write folder/summary.md, one line per pair."""
    path = folder / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    summary.update(rows)
    path.write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        f"# Attack suite: {folder.name}",
        "",
        *table(
            [
                "attack",
                "target",
                "clean acc.",
                "attack success",
                "detection",
                "clean FPR",
                "AUROC",
                "AE",
                "decision",
            ],
            [
                [
                    name,
                    p["target_class"],
                    *(f"{100 * p[m]:.2f}%" for m in SUMMARY_METRICS[:4]),
                    f"{p['auroc']:.4f}",
                    entry["ae"],
                    entry["decision"],
                ]
                for name, entry in summary.items()
                for p in entry["pairs"]
            ],
            spaced=True,
            align="lrrrrrrll",
        ),
    ]
    (folder / "summary.md").write_text("\n".join(lines) + "\n")


def run_suite(dataset: str, attacks: list[Attack], args: argparse.Namespace) -> dict[str, dict]:
    """Load the data once, get the AE, then train, evaluate and export every attack."""
    preset = PRESETS[dataset]
    train = load_dataset(dataset, "train", args.data_dir, args.download)
    test = load_dataset(dataset, "test", args.data_dir, args.download)
    tr, va = split_train_val(len(train), preset.target.val_size, preset.target.seed)
    data = {
        "train": train,
        "test": test,
        "tr": tr,
        "va": va,
        "test_x": to_float(test.images),
        "val_x": to_float(train.images[va]),
    }
    exclude = tuple(e for e in args.ae_exclude.split(",") if e)
    ae_cfg = with_triggers(
        preset.autoencoders["conv"],  # corner-trained, as the paper; --ae-triggers changes it
        args.ae_triggers,
        exclude,
        args.ae_epochs,
        args.threads,
    )
    ae = train_autoencoder(ae_cfg, train.images[tr], Path(args.run_dir) / dataset, log.info)
    rows = {}
    for attack in attacks:
        rows[attack.name] = run_attack(dataset, attack, data, ae, ae_cfg, args)
        write_summary(Path(args.out) / dataset, {attack.name: rows[attack.name]})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = cli.parser(__doc__, "training.suite")
    p.add_argument(
        "--dataset",
        required=True,
        choices=[d for d in DATASETS if d in PRESETS],
        help="whose preset and data the suite is trained on",
    )
    p.add_argument(
        "--attacks", default="", help="comma-separated attack names (default: all in the suite)"
    )
    p.add_argument(
        "--suite", default=str(DEFAULT_SUITE), help=f"suite file (default: {shown(DEFAULT_SUITE)})"
    )
    p.add_argument("--out", default="runs/suite", help="model sets go here (default: runs/suite)")
    p.add_argument("--run-dir", default="runs", help="checkpoints and logs (default: runs)")
    cli.add_data_dir(p)
    p.add_argument(
        "--download",
        action="store_true",
        help="download missing data from the official sources into --data-dir",
    )
    p.add_argument(
        "--ae-triggers",
        default="corner",
        choices=AE_TRIGGERS,
        help="the AE put in the sets: corner (the paper's, as `make reproduce` trains it) or "
        "random (training.train_detrigger --triggers random) (default: corner)",
    )
    p.add_argument(
        "--ae-exclude",
        default="",
        help="with --ae-triggers random: the families the AE was trained without, as given to "
        "training.train_detrigger --exclude (default: none)",
    )
    p.add_argument(
        "--ae-epochs",
        type=int,
        default=None,
        help="the AE's epochs, as given to training.train_detrigger --epochs (default: preset's)",
    )
    p.add_argument(
        "--init-from",
        default=None,
        help="fine-tune every attack from this target checkpoint instead of training from "
        f"scratch ({FINETUNE_EPOCHS} epochs at {FINETUNE_LR_SCALE:g} x the preset's lr unless "
        "--epochs / --lr say otherwise) (default: from scratch)",
    )
    p.add_argument("--epochs", type=int, default=None, help="target epochs (default: preset's)")
    p.add_argument("--lr", type=float, default=None, help="target peak lr (default: preset's)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    args = p.parse_args(argv)
    try:
        attacks = select(load_suite(Path(args.suite)), args.attacks)
    except SuiteError as e:
        p.error(str(e))
    if args.init_from and not Path(args.init_from).is_file():
        p.error(f"--init-from {args.init_from}: no such checkpoint")
    cli.log_to(Path(args.run_dir) / f"suite-{args.dataset}.log")
    torch.set_num_threads(args.threads)
    run_suite(args.dataset, attacks, args)


if __name__ == "__main__":
    main()
