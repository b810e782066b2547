"""Audit a model set for a backdoor and repair it (Menisov; Neural Cleanse), from one command:

    python -m training.audit --model-set models/mnist --dataset mnist

Reads target.onnx (converted to torch by training.nets.onnx_torch, so any model set under the
contract works), synthesises a trigger per class on a small clean set, flags classes whose mask
norm is anomalously small, identifies the trigger, repairs by pruning and by unlearning, writes
reports/audit/<dataset>/<set>/ (audit.json, README.md, plots) and, when repaired, exports the
unlearned (or pruned) model as the model set <set>-repaired beside the source.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from training import cli
from training.data.datasets import DATASETS
from training.evaluation.strip import StripOptions, calibrate_model_set, onnx_target
from training.evidence import hardware, versions
from training.inversion.data import (
    AuditData,
    load_audit_data,
    pseudo_labels,
    unlabelled_audit_data,
)
from training.inversion.fullimage import FAMILIES
from training.inversion.pipeline import AuditConfig, run_audit
from training.inversion.render import write_report
from training.inversion.synthesis import SynthConfig
from training.inversion.unlearn import SCHEDULES, UnlearnConfig
from training.nets.export import check_parity
from training.nets.manifest_file import sha256, write_manifest
from training.nets.onnx_torch import load_onnx_module, write_onnx


def audit_entry(summary: dict) -> dict:
    """The manifest's `audit` field (docs/model-contract.md), which /v1/models shows."""
    return {
        "flagged": summary["flagged"],
        "target_classes": summary["target_classes"],
        "anomaly_index": [c["anomaly_index"] for c in summary["per_class"]],
        "families": {
            name: {
                "flagged": f["flagged"],
                "anomaly_index": [c["anomaly_index"] for c in f["per_class"]],
            }
            for name, f in (summary.get("families") or {}).items()
        },
        "report": summary.get("report"),
    }


def record_audit(model_set: Path, summary: dict) -> None:
    """Write the audit's verdict into the audited set's own manifest (every other field is kept),
    so that the guard serving it shows it. A new export of the set (`make reproduce`) drops it:
    a retrained target needs a new audit."""
    raw = json.loads((model_set / "manifest.json").read_text())
    raw["audit"] = audit_entry(summary)
    write_manifest(model_set, raw)


def export_repaired(
    module,
    source: Path,
    out: Path,
    manifest: dict,
    audit: dict,
    repair: str,
    check_batch: torch.Tensor,
) -> dict:
    """Write `module` as target.onnx of a new model set `out`, the source's detrigger.onnx copied,
    with a manifest that records the audit and the repair. Parity with torch is checked."""
    out.mkdir(parents=True, exist_ok=True)
    write_onnx(module, out / "target.onnx")
    diff = max(
        check_parity(module, out / "target.onnx", check_batch),
        check_parity(module, out / "target.onnx", check_batch[:3]),
    )
    shutil.copyfile(source / manifest["detrigger"]["file"], out / "detrigger.onnx")
    new = json.loads(json.dumps(manifest))
    new["name"] = out.name
    new["description"] = (
        f"{manifest.get('description', source.name)}; target repaired by "
        f"{repair} after a trigger-synthesis audit"
    )
    new["target"].update(
        {
            "file": "target.onnx",
            "sha256": sha256(out / "target.onnx"),
            "parity_max_abs_diff": diff,
            "size_bytes": (out / "target.onnx").stat().st_size,
        }
    )
    new["detrigger"].update({"file": "detrigger.onnx", "sha256": sha256(out / "detrigger.onnx")})
    r = audit["repair"]
    chosen = r["unlearning" if repair == "unlearning" else "pruning"]
    new["evaluation"] = {
        "clean_accuracy": chosen["clean_accuracy"],
        "attack_success_rate": chosen.get("real_asr"),
        "synthesised_trigger_success": chosen["synth_asr"],
        "note": "measured by the audit on the test set; the de-trigger AE and "
        "its decision threshold are copied from the source set and were "
        "calibrated on the unrepaired target",
    }
    new["audit"] = audit_entry(audit)
    new["repair"] = {
        "method": repair,
        "source": str(source),
        "class": r["class"],
        "before": r["before"],
        "after": {k: v for k, v in chosen.items() if k not in ("config", "loss")},
    }
    if repair == "unlearning":
        new["repair"]["config"] = chosen["config"]
    else:
        new["repair"]["neurons_pruned"] = chosen["neurons_pruned"]
    new.pop("samples", None)  # the source's per-sample predictions no longer hold
    # STRIP's threshold was calibrated on the unrepaired target, and its bank file stays in the
    # source folder: drop the entry here; the audit recalibrates STRIP on the repaired target
    # (and detector both with it, which runs STRIP). Detector repaired compares the source's
    # target with an earlier repair of it: nothing of it holds for the new target, nor of
    # detector detrigger_or_repaired, which runs it.
    detectors = new.get("detectors") or {}
    for name in ("strip", "both", "repaired", "detrigger_or_repaired"):
        detectors.pop(name, None)
    if not detectors:
        new.pop("detectors", None)
    new["created"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    new["versions"] = versions()
    write_manifest(out, new)
    return {"path": str(out), "repair": repair, "parity_max_abs_diff": diff}


def recalibrate_strip(dest: Path, strip: dict, args: argparse.Namespace) -> dict:
    """STRIP for the repaired set, with the source set's settings (copies, bank size, target
    FPR, blend, seed) on the repaired target, so that the repaired set offers both detectors."""
    calibration = strip.get("calibration") or {}
    opts = StripOptions(
        model_set=str(dest),
        dataset=args.dataset,
        data_dir=args.data_dir,
        n=int(strip["n"]),
        target_fpr=float(calibration.get("target_fpr", 0.01)),
        bank_size=int(strip["bank"].get("images", 64)),
        input_weight=float(strip["blend"]["input_weight"]),
        bank_weight=float(strip["blend"]["bank_weight"]),
        seed=int(strip.get("seed", 0)),
    )
    command = (
        f"detrigger-guard calibrate {dest} --recorded-split --redraw-bank --dataset "
        f"{opts.dataset} --target-fpr {opts.target_fpr} --strip-bank {opts.bank_size} "
        f"--strip-n {opts.n} --seed {opts.seed} --threads 0"
    )
    return calibrate_model_set(opts, command)


def images_data(source: Path, args: argparse.Namespace) -> AuditData:
    """--images: the user's images at the set's input size, labelled by the set's target."""
    from contract.manifest import read_manifest
    from training.data.folders import FolderError, read_source

    m = read_manifest(source)
    chw = (m.input.channels, m.input.height, m.input.width)
    try:
        images, summary = read_source(args.images, chw, args.data_dir)
        data = labelled_by_target(source, images, args)
    except (FolderError, ValueError) as exc:
        raise SystemExit(f"--images {args.images}: {exc}") from exc
    print(f"{summary.line()}; labelled with the target's own classes")
    return data


def labelled_by_target(source: Path, images: np.ndarray, args: argparse.Namespace) -> AuditData:
    """The audit's splits of uint8 images (N, C, H, W) at the set's input size, each labelled
    with the set's target's class (--images, and fit --audit's training split); ValueError
    when they are too few."""
    from contract.manifest import read_manifest

    m = read_manifest(source)
    labels = pseudo_labels(onnx_target(source, m, args.threads), images)
    return unlabelled_audit_data(images, labels, m.classes, args.synth_images, args.seed)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.parser(__doc__, "training.audit")
    p.add_argument(
        "--model-set",
        default="models/mnist",
        help="model set folder with target.onnx and manifest.json (default: models/mnist)",
    )
    p.add_argument(
        "--dataset",
        default="mnist",
        choices=DATASETS,
        help="clean labelled data: a preset dataset, or 'folder' with --data-dir "
        "holding train/ and test/ (default: mnist)",
    )
    p.add_argument(
        "--images",
        default=None,
        help="instead of --dataset: your own images without labels (a folder, flat or one "
        "sub-folder per class, or a preset name), at the set's input size, labelled with the "
        "target's own classes; the report's clean accuracy is then agreement with the target",
    )
    cli.add_data_dir(p)
    p.add_argument(
        "--out",
        default=None,
        help="report folder (default: reports/audit/<dataset>/<set name>; with --images, "
        "reports/audit/images/<set name>)",
    )
    p.add_argument(
        "--synth-images",
        type=int,
        default=1000,
        help="clean images for trigger synthesis (default: 1000, ~2%% of MNIST)",
    )
    p.add_argument("--steps", type=int, default=300, help="synthesis steps (default: 300)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="clean images per synthesis step, x classes per forward (default: 32)",
    )
    p.add_argument(
        "--asr-target",
        type=float,
        default=0.99,
        help="attack success each synthesised trigger must reach (default: 0.99)",
    )
    p.add_argument(
        "--anomaly-threshold",
        type=float,
        default=2.0,
        help="flag a class whose small-side anomaly index exceeds this (default: 2)",
    )
    p.add_argument(
        "--families",
        default=",".join(FAMILIES),
        help="full-image trigger families searched beside the mask, comma-separated, or 'none' "
        "(training/inversion/fullimage.py; default: %(default)s)",
    )
    p.add_argument(
        "--family-steps",
        type=int,
        default=AuditConfig().family_synth.steps,
        help="search steps of each full-image family (default: %(default)s)",
    )
    p.add_argument(
        "--restarts",
        type=int,
        default=AuditConfig.restarts,
        help="new searches for a flagged class's trigger, from the corners, the centre, then "
        "random places (training/inversion/restarts.py; default: %(default)s, 0 = the sweep only)",
    )
    p.add_argument(
        "--keep-factor",
        type=float,
        default=AuditConfig.keep_factor,
        help="unlearn every found trigger whose mask L1 is at most this times the smallest "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--prune-stop-asr",
        type=float,
        default=0.01,
        help="stop pruning when the synthesised trigger's success is below this (default: 0.01)",
    )
    p.add_argument(
        "--unlearn-lr",
        type=float,
        default=UnlearnConfig.lr,
        help="Adam learning rate of the unlearning epoch (default: %(default)s, chosen on "
        "validation data by training.audit.tune)",
    )
    p.add_argument(
        "--unlearn-dilate",
        type=int,
        default=UnlearnConfig.dilate,
        help="grow the synthesised mask by this many pixels for unlearning (default: "
        "%(default)s, chosen on validation data by training.audit.tune)",
    )
    p.add_argument(
        "--unlearn-schedule",
        default=UnlearnConfig.schedule,
        choices=SCHEDULES,
        help="unlearning lr schedule (default: %(default)s)",
    )
    p.add_argument(
        "--repair",
        default="flagged",
        choices=("flagged", "always", "never"),
        help="when to repair (default: flagged)",
    )
    p.add_argument(
        "--export",
        default="unlearning",
        choices=("unlearning", "pruning", "none"),
        help="which repaired model to export as <set>-repaired (default: unlearning)",
    )
    p.add_argument(
        "--export-dir",
        default=None,
        help="where the repaired set goes (default: <model-set>-repaired)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of synthesis and unlearning (default: 0)"
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "--no-record",
        action="store_true",
        help="leave the audited set's manifest as it is (default: its `audit` field is written, "
        "which the guard's /v1/models shows)",
    )
    p.set_defaults(calibrate_hint=True)  # fit --audit calibrates the repair itself
    return p.parse_args(argv)


def audit_config(args: argparse.Namespace) -> AuditConfig:
    """The audit's settings from the command line."""
    return AuditConfig(
        synth=SynthConfig(
            steps=args.steps, batch_size=args.batch_size, asr_target=args.asr_target, seed=args.seed
        ),
        unlearn=UnlearnConfig(
            lr=args.unlearn_lr,
            seed=args.seed,
            dilate=args.unlearn_dilate,
            schedule=args.unlearn_schedule,
        ),
        anomaly_threshold=args.anomaly_threshold,
        prune_stop_asr=args.prune_stop_asr,
        repair=args.repair,
        restarts=args.restarts,
        keep_factor=args.keep_factor,
        families=families(args.families),
        family_synth=replace(AuditConfig().family_synth, steps=args.family_steps, seed=args.seed),
    )


def families(text: str) -> tuple[str, ...]:
    """--families: names from FAMILIES, comma-separated, or 'none'."""
    names = tuple(n.strip() for n in text.split(",") if n.strip() and n.strip() != "none")
    bad = [n for n in names if n not in FAMILIES]
    if bad:
        raise SystemExit(
            f"--families: unknown {', '.join(bad)}; allowed: {', '.join(FAMILIES)} or none"
        )
    return names


def audit_report(
    args: argparse.Namespace,
    cfg: AuditConfig,
    data: AuditData,
    summary: dict,
    exported: dict | None,
    wall_seconds: float,
) -> dict:
    """audit.json: the verdict, the exported repair, the settings and the evidence."""
    return {
        "model_set": str(Path(args.model_set)),
        "dataset": args.dataset if not args.images else None,
        "images": args.images,
        "labels": "the target's own classes" if args.images else "the dataset's",
        "classes": data.classes,
        "summary": summary,
        "exported": exported,
        "config": {
            "synth": cfg.synth.to_dict(),
            "unlearn": cfg.unlearn.to_dict(),
            "anomaly_threshold": cfg.anomaly_threshold,
            "prune_stop_asr": cfg.prune_stop_asr,
            "prune_step": cfg.prune_step,
            "prune_curve_share": cfg.prune_curve_share,
            "overlap_share": cfg.overlap_share,
            "repair": cfg.repair,
            "restarts": cfg.restarts,
            "keep_factor": cfg.keep_factor,
            "families": list(cfg.families),
            "family_synth": cfg.family_synth.to_dict(),
            "family_thresholds": {f: cfg.family_thresholds[f] for f in cfg.families},
        },
        "data": {
            "synthesis_images": len(data.synth_x),
            "test_images": len(data.test_x),
            "train_images": len(data.train_x),
        },
        "command": args.command,
        "seed": args.seed,
        "hardware": hardware(),
        "versions": versions(),
        "wall_seconds": wall_seconds,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def main(argv: list[str] | None = None) -> None:
    """``argv``: the options when called as ``detrigger-guard audit`` (cli/audit.py); None:
    ``python -m training.audit``'s own."""
    args = parse_args(argv)
    args.command = shlex.join(
        ["python", "-m", "training.audit", *sys.argv[1:]]
        if argv is None
        else ["detrigger-guard", "audit", *argv]
    )
    audit(args)


def audit(args: argparse.Namespace, data: AuditData | None = None) -> dict:
    """Audit the set ``args.model_set`` and write what :func:`main` writes; returns the report
    (audit.json). ``data``: the clean splits when the caller has them (``fit --audit``: fit's
    training images, labelled by the target), else read from --images or --dataset."""
    t0 = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    source = Path(args.model_set)
    cli.require_model_set(source)
    manifest = json.loads((source / "manifest.json").read_text())
    data_name = "images" if args.images else args.dataset
    out = Path(args.out or f"reports/audit/{data_name}/{source.name}")

    # data and model: the set's own target graph as torch, the audit's clean splits
    model = load_onnx_module(source / manifest["target"]["file"])
    if data is None and args.images:
        data = images_data(source, args)
    elif data is None:
        data = load_audit_data(args.dataset, args.data_dir, manifest, args.synth_images, args.seed)
    cfg = audit_config(args)

    # the audit: synthesis, anomaly, identification, repair
    res = run_audit(
        model,
        data.synth_x,
        data.train_x,
        data.train_y,
        data.test_x,
        data.test_y,
        len(data.classes),
        cfg,
        manifest.get("backdoor"),
        progress=not args.no_progress,
    )
    s = res.summary
    s["report"] = str(out / "audit.json")

    # save: the repaired set, the report, the verdict in the audited set's manifest
    exported = None
    if s.get("repair") and args.export != "none":
        module = res.unlearned if args.export == "unlearning" else res.pruned
        dest = Path(args.export_dir or f"{source}-repaired")
        exported = export_repaired(module, source, dest, manifest, s, args.export, data.test_x[:32])
        strip = (manifest.get("detectors") or {}).get("strip")
        if strip is not None and not args.images:  # STRIP's bank is drawn from a preset split
            exported["strip"] = recalibrate_strip(dest, strip, args)
    report = audit_report(args, cfg, data, s, exported, time.time() - t0)
    write_report(
        out,
        report,
        res.synth,
        res.prune_curve,
        res.candidates,
        res.repair_triggers,
        res.families,
        res.repair_full,
    )
    if not args.no_record:
        record_audit(source, s)
    verdict = f"FLAGGED, target class(es) {s['target_classes']}" if s["flagged"] else "not flagged"
    print(f"{source}: {verdict}; report in {out} ({report['wall_seconds']:.0f} s)")
    if exported is not None and args.calibrate_hint:
        # what the guard can do with the repair (docs/model-contract.md, "Detector repaired"):
        # calibrate on images neither the AE nor the repair trained on
        recorded = ((manifest.get("training") or {}).get("validation_split") or {}).get("n")
        images = "--recorded-split" if recorded else "--data HELD_OUT_IMAGES"
        print(
            f"repaired target in {exported['path']}; to flag inputs on which it and the audited "
            f"target disagree: detrigger-guard calibrate {source} {images} --repaired "
            f"{exported['path']}"
        )
    return report


if __name__ == "__main__":
    main()
