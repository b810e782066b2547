"""The walkthrough of docs/byom.md, its helpers:

    python -m bench.byom folder --dataset mnist --split train --out /tmp/byom/mnist-png
    python -m bench.byom measure --set /tmp/byom/mnist-set --dataset mnist \
        --trigger-from models/mnist/manifest.json
    python -m bench.byom backdoor --dataset cifar10 --init-from models/cifar10-clean/target.onnx \
        --attack dynamic --out /tmp/byom/cifar-dynamic

`folder` writes a preset's split as PNGs in the ImageFolder layout (what a user has); `measure`
loads a set as the service does (service.runtime.modelset.ModelSet) and reports, on the test
split, the share of clean images it flags (FPR) and the share of triggered images of other
classes than the backdoor's target it flags (detection), and of those the backdoor took to its
target (`detection_fired`: the attacks that worked), each with its 95% interval; with
`--against REPAIRED` also what comparing the set's target with the audit's repaired target
would flag (an image whose class the two disagree on; and by how much the repaired target
lowers the probability of the original's class, its threshold moved to each --at-fpr): a
measurement for a detector the service does not have yet (issue 22's warps).
`backdoor` makes a model for such a test whose trigger `fit` has never seen: a clean target
fine-tuned on the preset's training split poisoned with one attack of the suite
(training/attacks/suite.json), written as target.onnx with backdoor.json (its trigger, for
`measure --trigger-from`) and its clean accuracy and attack success on the test split; with
`--set-from SET` also OUT/set, a model set: SET's files with the new target and its backdoor,
re-thresholded on the preset's validation split (what the audit and the service load).
`adopt` makes such a set from a backdoored target made elsewhere (a set of the attack suite,
`python -m training.suite`): SET-FROM's AE and files with that set's target and backdoor,
re-thresholded on the validation split the target was held out from; so every attack of the
suite is judged with the AE and rules a set ships (training.fusion_report on the results).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def write_folder(dataset: str, split: str, out: Path, data_dir: str | None, limit: int) -> None:
    from PIL import Image

    from training.data.datasets import load_dataset

    data = load_dataset(dataset, split, data_dir)
    n = len(data.images) if limit <= 0 else min(limit, len(data.images))
    for i in range(n):
        a, y = data.images[i], int(data.labels[i])
        d = out / str(y)
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)).save(d / f"{i:05d}.png")
    print(f"{n} {dataset} {split} images written to {out}")


def measure(
    folder: Path,
    dataset: str,
    trigger_from: Path,
    data_dir: str | None,
    at_fpr: tuple[float, ...] = (),
    against: Path | None = None,
    detector: str = "detrigger",
) -> dict:
    from contract.modes import Detector
    from service.backends.local import LocalBackend
    from service.runtime.modelset import ModelSet
    from service.settings import Settings
    from training.data.datasets import load_dataset
    from training.data.triggers import Trigger
    from training.evaluation.metrics import rate

    backdoor = json.loads(trigger_from.read_text())["backdoor"]
    trigger, target = Trigger(**backdoor["trigger"]), int(backdoor["target_class"])
    model_set = ModelSet.load(folder, Settings(models=[folder]))
    chosen = Detector(detector)
    model_set.require(chosen)
    run = LocalBackend(model_set).batch_runs[chosen]  # what the service runs in local mode
    test = load_dataset(dataset, "test", data_dir)
    x = test.images.astype(np.float32) / np.float32(255.0)
    others = test.labels != target

    def flagged(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        parts = [run(images[i : i + 500]) for i in range(0, len(images), 500)]
        return (
            np.concatenate([p.decisions.flagged for p in parts]),
            np.concatenate([p.decisions.predicted for p in parts]),
            np.concatenate([p.decisions.score for p in parts]),
        )

    clean_flags, _, clean_score = flagged(x)
    triggered = np.asarray(trigger(x[others].copy()), np.float32)
    trig_flags, trig_pred, trig_score = flagged(triggered)
    fired = trig_pred == target  # the attacks that worked: taken to the backdoor's class
    out = {
        "set": str(folder),
        "detector": chosen.value,
        "fpr_clean_test": rate(clean_flags),
        "detection_triggered_test": rate(trig_flags),
        "attack_success": float(fired.mean()),
    }
    if fired.any():
        out["detection_fired"] = rate(trig_flags[fired])
    if at_fpr:  # the set's own rule (score > threshold), its threshold moved on the test split
        if model_set.manifest.decision.rule != "score" or chosen is not Detector.detrigger:
            raise SystemExit("--at-fpr needs detector detrigger with the decision rule 'score'")
        out["at_test_fpr"] = at_test_fpr(clean_score, trig_score, at_fpr, fired)
    if against is not None:
        out["against"] = compare_targets(folder, against, x, triggered, at_fpr)
    print(json.dumps(out, indent=2))
    return out


def at_test_fpr(
    clean: np.ndarray, triggered: np.ndarray, fprs: tuple, fired: np.ndarray | None = None
) -> dict:
    """Per FPR: the score threshold moved to flag fewer than that share of the clean test
    images (score > threshold flags), and what it flags of them and of the triggered ones (and
    of the triggered ones in `fired`, where the backdoor worked)."""
    from training.evaluation.metrics import rate

    ranked = np.sort(clean)[::-1]
    out = {}
    for fpr in fprs:
        threshold = float(ranked[int(np.floor(fpr * len(ranked)))])  # flags < fpr * N
        out[f"{fpr:g}"] = {
            "threshold": threshold,
            "fpr_clean_test": rate(clean > threshold),
            "detection_triggered_test": rate(triggered > threshold),
        }
        if fired is not None and fired.any():
            out[f"{fpr:g}"]["detection_fired"] = rate(triggered[fired] > threshold)
    return out


def compare_targets(
    folder: Path, repaired: Path, clean: np.ndarray, triggered: np.ndarray, at_fpr: tuple
) -> dict:
    """What comparing the target of `folder` with the target of `repaired` flags: the class the
    two disagree on, and the drop of the original's class probability under the repaired one
    (contract.scoring.prob_drop), its threshold moved to flag at most each of `at_fpr` of the
    clean images."""
    from contract.manifest import read_manifest, read_verified
    from contract.scoring import prob_drop
    from training.evaluation.detectors import Graph
    from training.evaluation.metrics import rate

    original, fixed = (
        Graph.load(read_verified(d, read_manifest(d).target), 0) for d in (folder, repaired)
    )

    def scores(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b = (
            np.concatenate([g(images[i : i + 500]) for i in range(0, len(images), 500)])
            for g in (original, fixed)
        )
        return a.argmax(axis=1) != b.argmax(axis=1), prob_drop(a, b)

    clean_dis, clean_drop = scores(clean)
    trig_dis, trig_drop = scores(triggered)
    return {
        "repaired": str(repaired),
        "class_change": {
            "fpr_clean_test": rate(clean_dis),
            "detection_triggered_test": rate(trig_dis),
        },
        "prob_drop_at_test_fpr": at_test_fpr(clean_drop, trig_drop, at_fpr),
    }


def backdoor(
    dataset: str,
    init_from: str,
    attack_name: str,
    out: Path,
    data_dir: str | None,
    epochs: int,
    set_from: Path | None = None,
) -> dict:
    import torch

    from training.config import PRESETS
    from training.data.attack_suite import load_suite
    from training.data.datasets import load_dataset, split_train_val
    from training.fit.target import train_target
    from training.nets.export import export_and_check
    from training.suite import attack_config
    from training.train_target import attack_summary

    preset = PRESETS[dataset]
    train = load_dataset(dataset, "train", data_dir)
    h, w = train.images.shape[-2:]
    suite = load_suite()
    if attack_name not in suite:
        raise SystemExit(f"--attack {attack_name!r}: allowed: {', '.join(suite)}")
    attack = suite[attack_name].resolved(h, w, len(train.classes))
    cfg = attack_config(preset.target, attack, init_from=init_from, epochs=epochs)
    tr, val = split_train_val(len(train), cfg.val_size, cfg.seed)
    model = train_target(cfg, train.images[tr], train.labels[tr], preset.mean, preset.std, out)
    test = load_dataset(dataset, "test", data_dir)
    summary = attack_summary(model, cfg, test.images, test.labels)
    sample = torch.from_numpy(test.images[:8].astype("float32") / 255.0)
    export_and_check(model, sample, out / "target.onnx", "images", "logits")
    trigger, target_class = attack.backdoors[0]
    record = {
        "backdoor": {"target_class": target_class, "trigger": trigger.to_dict()},
        "attack": attack_name,
        "init_from": init_from,
        "epochs": cfg.epochs,
        "test": summary,
    }
    (out / "backdoor.json").write_text(json.dumps(record, indent=2) + "\n")
    if set_from is not None:
        as_set(set_from, out, record, train.images[val])
    print(json.dumps(record, indent=2))
    return record


def adopt(
    source: Path,
    set_from: Path,
    out: Path,
    data_dir: str | None,
    attack: str,
    repaired: Path | None = None,
) -> Path:
    """OUT/set from the backdoored set `source` (its target.onnx, its recorded backdoor and the
    validation split its manifest's training.target names): see as_set."""
    import shutil

    from training.data.datasets import load_dataset, split_train_val

    raw = json.loads((source / "manifest.json").read_text())
    made = raw.get("training", {}).get("target", {})
    if not raw.get("backdoor") or not {"dataset", "val_size", "seed"} <= made.keys():
        raise SystemExit(
            f"{source}: its manifest records no backdoor, or no training.target split (dataset, "
            "val_size, seed): adopt takes a set made by training.suite or bench.byom backdoor"
        )
    train = load_dataset(made["dataset"], "train", data_dir)
    _, val = split_train_val(len(train), made["val_size"], made["seed"])
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / raw["target"]["file"], out / "target.onnx")
    record = {"backdoor": raw["backdoor"], "attack": attack, "adopted_from": str(source)}
    (out / "backdoor.json").write_text(json.dumps(record, indent=2) + "\n")
    dest = as_set(set_from, out, record, train.images[val], repaired)
    print(dest)
    return dest


def as_set(
    source: Path,
    out: Path,
    record: dict,
    val_images: np.ndarray,
    repaired: Path | None = None,
) -> Path:
    """OUT/set: a copy of the model set `source` with OUT's target.onnx and backdoor, calibrated
    on the target's held-out validation images (its decision, with the score `source` uses, STRIP
    and fusion re-thresholded). `source`'s repaired graph belongs to its own target and is left
    out; `repaired` (a graph or a set, e.g. the new target's audit export) becomes the copy's
    detector repaired, calibrated on the same images."""
    import contextlib
    import shutil
    import sys

    from training.evaluation.calibration import CalibrationOptions, calibrate_folder
    from training.evaluation.repaired import add_repaired
    from training.nets.manifest_file import sha256, write_manifest

    dest = out / "set"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source, dest)
    raw = json.loads((dest / "manifest.json").read_text())
    shutil.copyfile(out / "target.onnx", dest / raw["target"]["file"])
    target = dest / raw["target"]["file"]
    raw["target"].update({"sha256": sha256(target), "size_bytes": target.stat().st_size})
    raw["backdoor"] = record["backdoor"]
    raw["name"] = f"{source.name}-{record['attack']}"
    raw["description"] = (
        f"{source.name} with its target fine-tuned on the suite's {record['attack']} attack "
        "(python -m bench.byom backdoor)"
    )
    for stale in ("audit", "repair", "samples", "evaluation"):
        raw.pop(stale, None)
    detectors = raw.get("detectors") or {}
    detectors.pop("detrigger_or_repaired", None)  # it runs the stale graph
    stale_graph = detectors.pop("repaired", None)
    if stale_graph:
        (dest / stale_graph["file"]).unlink(missing_ok=True)
    write_manifest(dest, raw)
    # images the target never trained on: as they are, as calibrate --recorded-split uses them
    options = CalibrationOptions(score=raw["decision"]["score"], shift=0)
    command = " ".join(["python -m bench.byom", *sys.argv[1:]])
    with (
        add_repaired(dest, repaired, "prob_drop", command)
        if repaired is not None
        else contextlib.nullcontext()
    ):
        calibrate_folder(dest, val_images, options, "validation: the held-out split")
    return dest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    f = sub.add_parser("folder", help="write a preset's split as an ImageFolder tree of PNGs")
    f.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist or cifar10")
    f.add_argument("--split", default="train", help="train or test")
    f.add_argument("--out", required=True, help="the folder to write")
    f.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    f.add_argument("--data-dir", default=None, help="where the dataset lies")
    m = sub.add_parser("measure", help="detection and FPR of a set on the preset's test split")
    m.add_argument("--set", required=True, help="the model-set folder")
    m.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist or cifar10")
    m.add_argument("--trigger-from", required=True, help="a manifest whose backdoor to stamp")
    m.add_argument("--data-dir", default=None, help="where the dataset lies")
    m.add_argument(
        "--at-fpr",
        type=float,
        action="append",
        default=[],
        help="also the detection with the threshold moved to flag at most this share of the "
        "clean test images (to compare sets at one FPR); repeatable",
    )
    m.add_argument(
        "--against",
        default=None,
        help="a repaired set (training.audit's export): also what comparing the two targets flags",
    )
    m.add_argument(
        "--detector",
        default="detrigger",
        help="the detector measured, as the service runs it in local mode (default: detrigger)",
    )
    b = sub.add_parser("backdoor", help="fine-tune a clean target with one attack of the suite")
    b.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist or cifar10")
    b.add_argument("--init-from", required=True, help="the clean target.onnx to fine-tune")
    b.add_argument("--attack", required=True, help="an attack of training/attacks/suite.json")
    b.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (default: 2)")
    b.add_argument("--out", required=True, help="the folder to write")
    b.add_argument("--data-dir", default=None, help="where the dataset lies")
    b.add_argument(
        "--set-from",
        default=None,
        help="also write OUT/set: this model set with the new target, re-thresholded",
    )
    a = sub.add_parser("adopt", help="a set's AE and rules with another set's backdoored target")
    a.add_argument("--source", required=True, help="the backdoored set (training.suite's)")
    a.add_argument("--set-from", required=True, help="the model set whose AE and rules to use")
    a.add_argument("--out", required=True, help="the folder to write (the set: OUT/set)")
    a.add_argument("--attack", default=None, help="the attack's name (default: --source's name)")
    a.add_argument("--data-dir", default=None, help="where the dataset lies")
    a.add_argument(
        "--repaired",
        default=None,
        help="also detector repaired: this repaired copy of --source's target (a graph, or a "
        "set such as its audit's SOURCE-repaired)",
    )
    args = p.parse_args()
    if args.what == "adopt":
        source, name = Path(args.source), args.attack or Path(args.source).name
        repaired = Path(args.repaired) if args.repaired else None
        adopt(source, Path(args.set_from), Path(args.out), args.data_dir, name, repaired)
    elif args.what == "folder":
        write_folder(args.dataset, args.split, Path(args.out), args.data_dir, args.limit)
    elif args.what == "backdoor":
        backdoor(
            args.dataset,
            args.init_from,
            args.attack,
            Path(args.out),
            args.data_dir,
            args.epochs,
            Path(args.set_from) if args.set_from else None,
        )
    else:
        measure(
            Path(args.set),
            args.dataset,
            Path(args.trigger_from),
            args.data_dir,
            tuple(args.at_fpr),
            Path(args.against) if args.against else None,
            args.detector,
        )


if __name__ == "__main__":
    main()
