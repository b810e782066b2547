"""Reproduce the shipped model sets and reports: train the backdoored target, train both de-trigger
autoencoders, evaluate on the full test set, calibrate and pick the decision, export to ONNX (with
the parity check) and write models/<dataset>/ and reports/<dataset>/.

    python -m training.reproduce --dataset mnist        # or fashion-mnist, cifar10, all

Checkpoints go to --run-dir/<dataset>/ (git-ignored); a finished checkpoint made with the same
config is reused, a partial one is resumed, so an interrupted run can be started again.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from training import cli
from training.config import PRESETS, Preset
from training.data.datasets import load_dataset, split_train_val, to_float
from training.data.triggers import Trigger
from training.evaluation import report as rep
from training.evaluation import set_export
from training.evaluation.evaluate import choose_decision, evaluate_pair
from training.evaluation.recalibration import RecalibrateOptions, recalibrate
from training.evaluation.set_export import N_SAMPLES, backdoor_entry, export_model_set
from training.evaluation.strip import StripOptions, calibrate_model_set
from training.evidence import hardware, versions
from training.fit.autoencoder import train_autoencoder
from training.fit.target import train_target
from training.nets.gate import gate_model_set
from training.nets.manifest_file import write_manifest
from training.nets.models import TARGETS

REPO = Path(__file__).resolve().parents[1]

PAPER_EPOCHS = {"mnist": 50, "fashion-mnist": 50, "cifar10": 200}
log = logging.getLogger("training.reproduce")


@dataclass
class Evaluated:
    """Every AE with the target on the full test set (evaluate_pair's results and raw arrays per
    AE name), the decision chosen for the shipped AE, and the float test images."""

    trigger: Trigger
    test_x: torch.Tensor  # (N, C, H, W) in [0, 1]
    results: dict[str, dict]
    raws: dict[str, dict]
    decision: dict


def load_split(name: str, preset: Preset, args: argparse.Namespace) -> tuple:
    """(train, test, train indices, validation indices): the validation images are held out of
    training, for calibration."""
    cfg = preset.target
    train = load_dataset(name, "train", args.data_dir, args.download)
    test = load_dataset(name, "test", args.data_dir, args.download)
    tr, va = split_train_val(len(train), cfg.val_size, cfg.seed)
    log.info(
        "%s: %d train (%d held out for validation), %d test images %s",
        name,
        len(train),
        len(va),
        len(test),
        train.images.shape[1:],
    )
    return train, test, tr, va


def train_models(
    preset: Preset, images: np.ndarray, labels: np.ndarray, run_dir: Path, stages: dict
) -> tuple[torch.nn.Module, dict[str, torch.nn.Module]]:
    """The backdoored target and every AE of the preset, each stage timed into `stages`."""
    t = time.time()
    target = train_target(preset.target, images, labels, preset.mean, preset.std, run_dir, log.info)
    stages["target"] = time.time() - t
    aes = {}
    for ae_name, ae_cfg in preset.autoencoders.items():
        t = time.time()
        aes[ae_name] = train_autoencoder(ae_cfg, images, run_dir, log.info)
        stages[f"ae_{ae_name}"] = time.time() - t
    return target, aes


def evaluate_models(
    name: str, preset: Preset, target: torch.nn.Module, aes: dict, train, test, va: np.ndarray
) -> Evaluated:
    """Every AE with the target on the full test set, thresholds calibrated on the validation
    images, and the decision of the shipped AE at the preset's target FPR."""
    cfg = preset.target
    trigger = Trigger(**cfg.trigger)
    test_x, val_x = to_float(test.images), to_float(train.images[va])
    val_y = train.labels[va]
    results, raws, cache = {}, {}, {}
    fprs = tuple(sorted({*preset.calibration_fprs, preset.target_fpr}))  # (0.01, [0.03,] 0.05)
    for ae_name, ae in aes.items():
        results[ae_name], raws[ae_name] = evaluate_pair(
            target,
            ae,
            test_x,
            test.labels,
            val_x,
            val_y,
            trigger,
            cfg.target_class,
            fprs,
            cache,
            preset.confidence,
        )
        r = results[ae_name]
        log.info(
            "%s %s AE: clean acc %.4f, after AE %.4f, ASR %.4f, class-change detection "
            "%.4f at FPR %.4f, backdoor acc after AE %.4f",
            name,
            ae_name,
            r["clean_accuracy"],
            r["clean_accuracy_after_ae"],
            r["attack_success_rate"],
            r["test"]["class_change"]["detection_rate"],
            r["test"]["class_change"]["false_positive_rate"],
            r["backdoor_accuracy_after_ae"],
        )
    decision = choose_decision(results[preset.shipped_ae], preset.target_fpr)
    log.info("%s decision: %s", name, decision)
    return Evaluated(trigger, test_x, results, raws, decision)


def training_record(preset: Preset, va: np.ndarray) -> dict:
    """The manifest's and the report's `training`: the configs that made the set."""
    cfg = preset.target
    return {
        "seed": cfg.seed,
        "target": asdict(cfg),
        "autoencoders": {k: asdict(v) for k, v in preset.autoencoders.items()},
        "normalisation": {"mean": preset.mean, "std": preset.std},
        "validation_split": {"n": int(len(va)), "from": "training data"},
    }


def export_set(
    name: str,
    preset: Preset,
    target: torch.nn.Module,
    aes: dict,
    ev: Evaluated,
    test,
    training_cfg: dict,
    out: Path,
) -> dict:
    """models/<name>: both graphs (parity-checked), samples, the decision re-run with ONNX
    Runtime, and the manifest; returns the ONNX Runtime check. A set must stay under 20 MB."""
    cfg, shipped = preset.target, preset.shipped_ae
    pairs = [(ev.trigger, cfg.target_class)]
    exported = export_model_set(
        out,
        target,
        aes[shipped],
        ev.test_x,
        test.labels,
        pairs,
        ev.decision,
        [ev.raws[shipped]["logits"]],
    )
    onnx_runtime = exported["onnx_runtime"]
    log.info("%s ONNX Runtime on the test set: %s", name, onnx_runtime)
    manifest = set_export.manifest(
        name,
        f"BadNets-backdoored demo {cfg.arch} target with the {shipped} de-trigger "
        f"AE (Kwon, de-trigger autoencoder; {preset.autoencoders[shipped].arch}, trained on "
        f"{preset.autoencoders[shipped].triggers} triggers)",
        test.images.shape[1:],
        list(test.classes),
        exported,
        cfg.arch,
        preset.autoencoders[shipped].arch,
        ev.decision,
        backdoor_entry(pairs, cfg.poison_rate),
        set_export.set_evaluation(
            pairs,
            [ev.results[shipped]],
            ev.decision,
            preset.target_fpr,
            onnx_runtime,
            f"reports/{name}/report.json",
        ),
        training_cfg,
        versions(),
    )
    write_manifest(out, manifest)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    log.info("%s model set written to %s (%.1f MB)", name, out, size / 1e6)
    if size >= 20e6:
        raise RuntimeError(f"{out} is {size / 1e6:.1f} MB; a shipped set must stay under 20 MB")
    return onnx_runtime


def calibrate_command(
    name: str,
    preset: Preset,
    out: Path,
    data_dir: str | None,
    mode: Sequence[str],
    extra: Sequence[str] = (),
) -> str:
    """The `detrigger-guard calibrate SET --recorded-split` command, with the ``mode`` options
    and ``extra`` ones, that a step of this run does (what the manifest records)."""
    argv = [str(out), "--recorded-split", *mode, "--dataset", name]
    argv += ["--target-fpr", f"{preset.target_fpr:g}", "--confidence", f"{preset.confidence:g}"]
    argv += [*extra, *(["--data-dir", data_dir] if data_dir else [])]
    return " ".join(["detrigger-guard calibrate", *argv])


def gate_set(name: str, preset: Preset, out: Path, data_dir: str | None) -> None:
    """Gate the set's AE at the preset's unchanged tolerance and calibrate its decision again
    on the same validation split, as `detrigger-guard calibrate SET --recorded-split
    --unchanged-tolerance T` does."""
    tolerance = ["--unchanged-tolerance", f"{preset.unchanged_tolerance:g}"]
    command = calibrate_command(name, preset, out, data_dir, tolerance)
    with gate_model_set(out, preset.unchanged_tolerance, command):
        recalibrate(
            RecalibrateOptions(
                model_set=str(out),
                dataset=name,
                data_dir=data_dir,
                target_fpr=preset.target_fpr,
                confidence=preset.confidence,
                command=command,
            ),
            log=log.info,
        )


def calibrate_strip(name: str, preset: Preset, out: Path, data_dir: str | None) -> dict:
    """STRIP, the second detector: its bank and threshold for the same target FPR, as
    `detrigger-guard calibrate SET --recorded-split --redraw-bank` with these options would
    write them (the manifest records that command)."""
    bank = ["--strip-bank", str(preset.strip_bank_size), "--strip-n", str(preset.strip_n)]
    command = calibrate_command(
        name, preset, out, data_dir, ["--redraw-bank"], [*bank, "--threads", "0"]
    )
    return calibrate_model_set(
        StripOptions(
            model_set=str(out),
            dataset=name,
            data_dir=data_dir,
            n=preset.strip_n,
            target_fpr=preset.target_fpr,
            confidence=preset.confidence,
            bank_size=preset.strip_bank_size,
        ),
        command,
    )


def plot_figures(
    name: str, aes: dict, ev: Evaluated, test, folder: Path, shipped: str, target_class: int
) -> None:
    """bars.png, roc.png and examples.png (clean, triggered and every AE's output)."""
    rep.plot_bars(ev.results, folder / "bars.png", f"{name}: accuracy before / after the AE")
    rep.plot_roc(
        {k: v["roc"] for k, v in ev.raws.items()}, folder / "roc.png", f"{name}: detection ROC"
    )
    test_x, trigger, raws = ev.test_x, ev.trigger, ev.raws
    ex = np.flatnonzero(test.labels != target_class)[:N_SAMPLES]
    rows = {"clean": test_x[ex].numpy(), "triggered": trigger(test_x[ex]).numpy()}
    captions = {
        "clean": [f"y={test.labels[j]} pred={raws[shipped]['logits'][0][j].argmax()}" for j in ex],
        "triggered": [f"pred={raws[shipped]['logits'][2][j].argmax()}" for j in ex],
    }
    with torch.no_grad():
        for ae_name, ae in aes.items():
            rows[f"{ae_name} AE"] = ae(trigger(test_x[ex])).numpy()
            captions[f"{ae_name} AE"] = [
                f"pred={raws[ae_name]['logits'][3][j].argmax()}" for j in ex
            ]
    rep.plot_examples(rows, folder / "examples.png", captions)


def run_dataset(name: str, args: argparse.Namespace) -> dict:
    """Train, evaluate, export, calibrate and report one dataset's model set."""
    preset = PRESETS[name]
    cfg = preset.target
    t_start = time.time()
    stages: dict[str, float] = {}
    run_dir = Path(args.run_dir) / name

    # --- data
    t = time.time()
    train, test, tr, va = load_split(name, preset, args)
    stages["load"] = time.time() - t

    # --- models
    target, aes = train_models(preset, train.images[tr], train.labels[tr], run_dir, stages)

    # --- evaluation on the full test set, and the decision
    t = time.time()
    ev = evaluate_models(name, preset, target, aes, train, test, va)
    stages["evaluate"] = time.time() - t

    # --- export the model set
    t = time.time()
    out = Path(args.models_dir) / name
    training_cfg = training_record(preset, va)
    onnx_runtime = export_set(name, preset, target, aes, ev, test, training_cfg, out)
    stages["export"] = time.time() - t

    # --- the unchanged-image gate, then STRIP (and detector both) on the gated AE
    if preset.unchanged_tolerance:
        t = time.time()
        gate_set(name, preset, out, args.data_dir)
        stages["gate"] = time.time() - t
    t = time.time()
    strip = calibrate_strip(name, preset, out, args.data_dir)
    stages["strip"] = time.time() - t

    # --- report
    folder = Path(args.reports_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    plot_figures(name, aes, ev, test, folder, preset.shipped_ae, cfg.target_class)
    report = {
        "dataset": name,
        "target_arch": cfg.arch,
        "shipped_ae": preset.shipped_ae,
        "decision": ev.decision,
        "results": ev.results,
        "onnx_runtime": onnx_runtime,
        "strip": {
            "threshold_bits": strip["threshold"],
            "validation_images": strip["n"],
            "validation_false_positive_rate": strip["false_positive_rate"],
            "validation_triggered": strip.get("triggered", []),
        },
        "training": training_cfg,
        "paper_epochs": PAPER_EPOCHS.get(name),
        "command": " ".join(["python -m training.reproduce", *sys.argv[1:]]),
        "seed": cfg.seed,
        "hardware": hardware(),
        "versions": versions(),
        "stage_seconds": stages,
        "wall_seconds": time.time() - t_start,
        "note": "Training stages that found a finished checkpoint of the same config in the run "
        "directory reloaded it; their time is then the load time.",
    }
    rep.write_dataset_report(folder, report)
    # A swap report (training.swap_detrigger) described the set this run has just rewritten.
    for stale in (folder / "detrigger_swap.json", folder / "detrigger_swap.md"):
        if stale.is_file():
            stale.unlink()
            log.info("removed %s: it described the model set this run replaced", stale)
    return report


def main() -> None:
    p = cli.parser(__doc__, "training.reproduce")
    p.add_argument(
        "--dataset", default="all", help="mnist, fashion-mnist, cifar10 or all (default: all)"
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder looked at first for the data files (default: only the standard "
        "places, see training/data/datasets.py)",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="download missing data from the official sources into --data-dir",
    )
    p.add_argument("--models-dir", default="models", help="where model sets go (default: models)")
    p.add_argument("--reports-dir", default="reports", help="where reports go (default: reports)")
    p.add_argument("--run-dir", default="runs", help="checkpoints and logs (default: runs)")
    p.add_argument(
        "--target-arch",
        default=None,
        choices=TARGETS,
        help="override the preset's target architecture, e.g. vgg19 for the paper's "
        "CIFAR-10 net (default: the preset's)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch CPU threads per process (default: 2; use 1 on a busy machine, where "
        "two threads of one process wait on each other)",
    )
    args = p.parse_args()
    names = list(PRESETS) if args.dataset == "all" else [args.dataset]
    for n in names:
        if n not in PRESETS:
            p.error(f"unknown dataset {n!r}; allowed: {', '.join(PRESETS)}, all")
    cli.log_to(Path(args.run_dir) / "reproduce.log")
    torch.set_num_threads(args.threads)
    for n in names:
        PRESETS[n].target.threads = args.threads
        if args.target_arch:
            PRESETS[n].target.arch = args.target_arch
        for ae_cfg in PRESETS[n].autoencoders.values():
            ae_cfg.threads = args.threads
        run_dataset(n, args)
        reports = Path(args.reports_dir)
        # The shipped reports also feed the project README's table of the shipped sets.
        shipped = reports.resolve() == (REPO / "reports").resolve()
        rep.write_readme(reports, project_readme=REPO / "README.md" if shipped else None)


if __name__ == "__main__":
    main()
