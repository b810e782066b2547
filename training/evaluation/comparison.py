"""The detection comparison on one model set: every de-trigger AE (class-change rule and KL
score) and STRIP run with ONNX Runtime on the set's target, thresholds calibrated on the
held-out validation split, rates, ROC points and an analysis of the misses. The
detection_report job runs it on every set of a dataset and writes the report; its docstring
describes the method.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.manifest import read_manifest, read_verified
from contract.strip import StripConfig, flag
from training.data.attack_suite import Attack, SuiteError
from training.data.datasets import Dataset
from training.data.triggers import Trigger, backdoor_pairs
from training.evaluation.detection import MIN_THRESHOLD, calibrate
from training.evaluation.detection_markdown import (
    FPR_GRID,
    PAPER_ATTACK,
    ROC_FPRS,
)
from training.evaluation.detectors import (
    AEScores,
    Graph,
    StripScores,
    ae_passes,
    float_batches,
    run_ae,
    run_strip_detector,
    strip_passes,
    warm_up,
)
from training.evaluation.metrics import auroc, flag_rate, roc_curve, tpr_at_fpr
from training.evaluation.report import plot_examples
from training.evaluation.strip import bank_and_calibration, strip_threshold, validation_indices


@dataclass(frozen=True)
class CompareOptions:
    """The settings one comparison runs under: detection_report's options of the same names."""

    dataset: str
    out: str  # report folder: example grids go to out/<dataset>/
    seed: int = 0
    batch_size: int = 64
    threads: int = 1
    strip_n: int = 16
    bank_size: int = 64
    target_fpr: float = 0.01
    kl_floor: float = MIN_THRESHOLD["kl"]
    # the AEs' KL thresholds (metrics.threshold_at_fpr): 0 is the plain quantile; STRIP's stays
    # at the plain quantile (ae_candidates --confidence runs no STRIP)
    confidence: float = 0.0
    goal: float = 0.9
    examples: int = 6
    val_images: int = 0
    val_size: int = 5000


LABEL = re.compile(r"^[a-z0-9][a-z0-9-]*$")
OWN_AE = "set"  # --ae LABEL=set: each model set's own detrigger.onnx


# --- what is compared -------------------------------------------------------------------------
@dataclass(frozen=True)
class AESpec:
    """--ae LABEL[@ATTACK]=PATH: a de-trigger AE, for every set or for one attack's set."""

    label: str
    attack: str | None  # None: every set
    path: str  # an ONNX file, or OWN_AE

    @classmethod
    def parse(cls, text: str) -> AESpec:
        key, sep, path = text.partition("=")
        label, _, attack = key.partition("@")
        if not sep or not path or not LABEL.match(label) or (attack and not LABEL.match(attack)):
            raise ValueError(
                f"--ae {text!r}: expected LABEL=PATH or LABEL@ATTACK=PATH, LABEL and ATTACK of "
                "[a-z0-9-] characters, PATH an ONNX file or 'set' (the set's own detrigger.onnx)"
            )
        if path != OWN_AE and not Path(path).is_file():
            raise ValueError(f"--ae {text!r}: no such file {path}")
        return cls(label, attack or None, path)


def aes_for(specs: Sequence[AESpec], attack: str) -> dict[str, AESpec]:
    """Label -> the AE that runs on this attack's set: one given for the attack itself wins over
    one given for every set; a label with neither is not run on it."""
    chosen: dict[str, AESpec] = {}
    for spec in specs:
        if spec.attack in (None, attack) and (
            spec.label not in chosen or chosen[spec.label].attack is None
        ):
            chosen[spec.label] = spec
    return chosen


def attack_name(raw: dict, folder: Path, suite: dict[str, Attack], chw: tuple) -> str:
    """Which attack a set carries: the suite attack its manifest names (training.suite), else
    the suite attack whose pairs equal its backdoor (the shipped sets), else the folder name."""
    named = ((raw.get("training") or {}).get("suite") or {}).get("attack")
    if named:
        return str(named)

    def canon(pairs: list[tuple[Trigger, int]]) -> str:
        return json.dumps([[t.to_dict(), k] for t, k in pairs], sort_keys=True, default=list)

    try:
        own = canon([(t.resolve(chw[1], chw[2]), k) for t, k in backdoor_pairs(raw)])
    except (KeyError, TypeError, ValueError):
        return folder.name
    for attack in suite.values():
        try:
            resolved = attack.resolved(chw[1], chw[2], len(raw.get("classes") or [0] * 10))
        except SuiteError:
            continue
        if canon(list(resolved.backdoors)) == own:
            return attack.name
    return folder.name


def find_sets(
    args: argparse.Namespace, suite: dict[str, Attack], chw: tuple
) -> tuple[list[tuple[str, Path]], list[str]]:
    """[(attack, folder)] in suite order (others after), and the suite's attacks with no set."""
    found: dict[str, Path] = {}
    if args.sets:
        for item in filter(None, (s.strip() for s in args.sets.split(","))):
            name, sep, path = item.partition("=")
            if not sep or not LABEL.match(name):  # a plain folder (its name may hold a '=')
                name, path = "", item
            folder = Path(path)
            if not (folder / "manifest.json").is_file():
                raise SystemExit(f"--sets: {folder} holds no manifest.json")
            raw = json.loads((folder / "manifest.json").read_text())
            name = name or attack_name(raw, folder, suite, chw)
            if name in found:
                raise SystemExit(f"--sets: two sets for attack {name!r}: {found[name]}, {folder}")
            found[name] = folder
    else:
        shipped = Path(args.shipped or f"models/{args.dataset}")
        if (shipped / "manifest.json").is_file():
            raw = json.loads((shipped / "manifest.json").read_text())
            found[attack_name(raw, shipped, suite, chw)] = shipped
        for name in suite:
            folder = Path(args.suite_dir) / args.dataset / name
            if name not in found and (folder / "manifest.json").is_file():
                found[name] = folder
    order = [n for n in suite if n in found] + [n for n in found if n not in suite]
    return [(n, found[n]) for n in order], [n for n in suite if n not in found]


# --- metrics ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """One detector on one group of images: suspicion (higher = more suspicious), flags, and the
    classes it saw (for the miss analysis)."""

    suspicion: np.ndarray
    flagged: np.ndarray
    predicted: np.ndarray
    detriggered: np.ndarray | None
    raw_score: np.ndarray  # the detector's own score: KL in nats, entropy in bits, 0/1 change


def ae_outcomes(s: AEScores, rule: str, threshold: float | None) -> Outcome:
    if rule == "class_change":
        flags = s.class_change
        return Outcome(flags.astype(float), flags, s.predicted, s.detriggered, flags.astype(float))
    assert threshold is not None
    return Outcome(s.kl, s.kl > threshold, s.predicted, s.detriggered, s.kl)


def strip_outcome(s: StripScores, threshold: float) -> Outcome:
    return Outcome(-s.entropy, flag(s.entropy, threshold), s.predicted, None, s.entropy)


def pool(outcomes: Sequence[Outcome]) -> Outcome:
    """The outcomes of several groups of images as one (a two-target set's pooled positives)."""

    def cat(field: str) -> np.ndarray:
        return np.concatenate([getattr(o, field) for o in outcomes])

    no_ae = any(o.detriggered is None for o in outcomes)
    return Outcome(
        cat("suspicion"),
        cat("flagged"),
        cat("predicted"),
        None if no_ae else cat("detriggered"),
        cat("raw_score"),
    )


def rates(neg: Outcome, pos: Outcome, fired: np.ndarray) -> dict[str, Any]:
    """Detection rate and FPR at the calibrated decision; AUROC and TPR at fixed FPRs from the
    ROC on these test images (for the class-change rule: its single operating point). `fired`
    marks the positives the backdoor sent to its target class: detection on them alone tells a
    detector's misses from the attack's (None when the trigger fired on none)."""
    out = {
        "n_positive": int(len(pos.flagged)),
        "detection_rate": flag_rate(pos.flagged),
        "n_fired": int(fired.sum()),
        "detection_rate_fired": flag_rate(pos.flagged[fired]) if fired.any() else None,
        "false_positive_rate": flag_rate(neg.flagged),
        "auroc": auroc(neg.suspicion, pos.suspicion),
    }
    for f in ROC_FPRS:
        out[f"tpr_at_fpr{f:g}"] = tpr_at_fpr(neg.suspicion, pos.suspicion, f)
    return out


def roc_on_grid(neg: np.ndarray, pos: np.ndarray) -> list[float]:
    """TPR at FPR <= g for every g of FPR_GRID: the ROC curve, small enough for the json."""
    fpr, tpr = roc_curve(neg, pos)
    idx = np.searchsorted(fpr, np.asarray(FPR_GRID), side="right") - 1
    return [round(float(v), 6) for v in tpr[idx]]


def miss_reasons(pos: Outcome, target_class: int) -> dict[str, float]:
    """Why missed positives were missed, as shares of them: the trigger did not send the image
    to the target class (nothing to detect); the AE left it in the target class; or it did
    neither and the score stayed on the clean side of the threshold."""
    missed = ~pos.flagged
    fired = pos.predicted == target_class
    kept = fired & (pos.detriggered == target_class) if pos.detriggered is not None else None
    n = max(int(missed.sum()), 1)
    out = {"not_fired": float((missed & ~fired).sum() / n)}
    if kept is not None:
        out["ae_kept_target"] = float((missed & kept).sum() / n)
        out["under_threshold"] = float((missed & fired & ~kept).sum() / n)
    else:
        out["under_threshold"] = float((missed & fired).sum() / n)
    return out


# --- one model set ----------------------------------------------------------------------------
@dataclass
class Data:
    train: Dataset
    test: Dataset
    test_idx: np.ndarray  # the test images used (all unless --test-images)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def ae_info(spec: AESpec, folder: Path, raw: dict) -> tuple[bytes, dict[str, Any]]:
    """An AE's bytes and what is known of it: file, sha256, training triggers."""
    if spec.path == OWN_AE:
        manifest = read_manifest(folder)
        data = read_verified(folder, manifest.detrigger)
        training = raw.get("training") or {}
        arch = (raw.get("detrigger") or {}).get("architecture", "")
        # A swapped-in AE (training.swap_detrigger) first: `autoencoders` holds every AE
        # reproduce trained, and more than one of them can share the shipped one's arch.
        cfg = (
            (training.get("detrigger_swap") or {}).get("autoencoder")
            or training.get("autoencoder")
            or (training.get("autoencoders") or {}).get(arch, {})
        )
        path = str(folder / manifest.detrigger.file)
    else:
        data = Path(spec.path).read_bytes()
        beside = Path(spec.path).with_suffix(".json")  # training.train_detrigger --export
        cfg = json.loads(beside.read_text()).get("autoencoder", {}) if beside.is_file() else {}
        path = spec.path
    info = {
        "label": spec.label,
        "file": path,
        "sha256": hashlib.sha256(data).hexdigest(),
        "triggers": cfg.get("triggers"),
        "synthesised": cfg.get("synthesised") or None,
        "exclude": cfg.get("exclude") or None,
    }
    return data, info


def example_grid(
    path: Path,
    data: Data,
    idx: np.ndarray,
    trigger: Trigger,
    target: Graph,
    ae: Graph | None,
    pos: Outcome,
    where: np.ndarray,
    classes: list[str],
    score_name: str,
) -> None:
    """Clean / triggered / AE output of some missed positives, captioned with the target's
    predictions (and the detector's score)."""
    (x,) = float_batches(data.test.images[idx], len(idx))
    xt = np.asarray(trigger(x), np.float32)
    rows = {"clean": x, "triggered": xt}
    if ae is not None:
        rows["AE output"] = ae(xt).astype(np.float32)
    logits = target(np.concatenate(list(rows.values())))
    pred = logits.argmax(axis=1).reshape(len(rows), len(idx))

    def name(k: int) -> str:
        return classes[k][:9]

    captions = {
        "clean": [
            f"y={name(data.test.labels[i])} f={name(p)}" for i, p in zip(idx, pred[0], strict=True)
        ],
        "triggered": [
            f"f={name(p)}" + ("" if ae is not None else f" H={pos.raw_score[w]:.2f}")
            for p, w in zip(pred[1], where, strict=True)
        ],
    }
    if ae is not None:
        captions["AE output"] = [
            f"f={name(p)} {score_name}={pos.raw_score[w]:.2g}"
            for p, w in zip(pred[2], where, strict=True)
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_examples(rows, path, captions)


@dataclass
class Run:
    """One detector run on one set: its validation flags, negatives and positives per pair."""

    name: str
    ae: str | None  # the AE's label; None for STRIP
    rule: str  # class_change, kl or strip
    threshold: float | None  # None for the class-change rule
    passes: dict[str, int]
    seconds: float  # over the test images, clean and triggered
    val: np.ndarray  # (V,) flags on the clean validation images
    neg: Outcome  # clean test images
    pos: list[Outcome]  # triggered test images, one per pair
    graph: Graph | None  # the AE, for the example grids
    extra: dict[str, Any]  # reported beside the metrics


@dataclass(frozen=True)
class SetImages:
    """Which images a set is measured on (indices into the train and test splits)."""

    calib: np.ndarray  # clean validation images the thresholds are set on
    bank: np.ndarray  # STRIP's bank (other validation images)
    test: np.ndarray  # clean test images: the negatives
    pos: list[np.ndarray]  # per pair: test images of other classes than its target


def ae_runs(
    label: str,
    ae: Graph,
    target: Graph,
    pairs: list[tuple[Trigger, int]],
    data: Data,
    idx: SetImages,
    opts: CompareOptions,
) -> list[Run]:
    """One AE, two rules: the class change, and KL thresholded on validation."""
    s_val = run_ae(data.train.images[idx.calib], ae, target, opts.batch_size)
    s_neg = run_ae(data.test.images[idx.test], ae, target, opts.batch_size)
    s_pos = [
        run_ae(data.test.images[p], ae, target, opts.batch_size, t)
        for (t, _), p in zip(pairs, idx.pos, strict=True)
    ]
    seconds = s_neg.seconds + sum(s.seconds for s in s_pos)
    accuracy = float((s_neg.detriggered == data.test.labels[idx.test]).mean())
    # How far the AE moves images (its largest pixel change): the room for an unchanged-image
    # gate (contract/unchanged.py) is between the clean images' and the triggered ones'.
    moved = {
        "clean_median": float(np.median(s_neg.moved)),
        "clean_unchanged": float((s_neg.moved == 0).mean()),
        "triggered_min": [float(s.moved.min()) for s in s_pos],
        "triggered_unchanged": [float((s.moved == 0).mean()) for s in s_pos],
    }
    runs = []
    for rule, t in (
        ("class_change", None),
        ("kl", calibrate(s_val.kl, opts.target_fpr, opts.kl_floor, opts.confidence)),
    ):
        runs.append(
            Run(
                f"{label} AE, "
                + ("class change" if t is None else f"KL @ {opts.target_fpr:g} FPR"),
                label,
                rule,
                t,
                ae_passes(),
                seconds,
                ae_outcomes(s_val, rule, t).flagged,
                ae_outcomes(s_neg, rule, t),
                [ae_outcomes(s, rule, t) for s in s_pos],
                ae,
                {"clean_accuracy_after_ae": accuracy, "largest_pixel_change": moved},
            )
        )
    return runs


def strip_run(
    target: Graph,
    pairs: list[tuple[Trigger, int]],
    data: Data,
    idx: SetImages,
    raw: dict,
    opts: CompareOptions,
) -> Run:
    """STRIP with the bank and calibration images its calibration (training.evaluation.strip)
    takes."""
    bank = data.train.images[idx.bank].astype(np.float32) / np.float32(255.0)  # (M, C, H, W)
    config = StripConfig(opts.strip_n, opts.seed)
    h_val = run_strip_detector(data.train.images[idx.calib], bank, config, target, opts.batch_size)
    h_neg = run_strip_detector(data.test.images[idx.test], bank, config, target, opts.batch_size)
    h_pos = [
        run_strip_detector(data.test.images[p], bank, config, target, opts.batch_size, t)
        for (t, _), p in zip(pairs, idx.pos, strict=True)
    ]
    threshold = strip_threshold(h_val.entropy, opts.target_fpr)
    shipped = (raw.get("detectors") or {}).get("strip") or {}
    return Run(
        f"STRIP (n={opts.strip_n})",
        None,
        "strip",
        threshold,
        strip_passes(opts.strip_n),
        h_neg.seconds + sum(s.seconds for s in h_pos),
        flag(h_val.entropy, threshold),
        strip_outcome(h_neg, threshold),
        [strip_outcome(s, threshold) for s in h_pos],
        None,
        # the set's own calibrated threshold, when it ships one: the same bank and images give
        # the same number
        {"manifest_threshold": shipped.get("threshold")} if shipped else {},
    )


def detector_entry(run: Run, pairs: list[tuple[Trigger, int]], timed_images: int) -> dict:
    pooled = pool(run.pos)
    fired = [o.predicted == k for (_, k), o in zip(pairs, run.pos, strict=True)]
    return {
        "name": run.name,
        "ae": run.ae,
        "rule": run.rule,
        "threshold": run.threshold,
        "forward_passes": run.passes,
        "ms_per_image": 1000.0 * run.seconds / max(timed_images, 1),
        "images_timed": int(timed_images),
        "validation_false_positive_rate": flag_rate(run.val),
        **rates(run.neg, pooled, np.concatenate(fired)),
        "pairs": [
            {"target_class": k, **rates(run.neg, o, f)}
            for (_, k), o, f in zip(pairs, run.pos, fired, strict=True)
        ],
        "roc_tpr": roc_on_grid(run.neg.suspicion, pooled.suspicion),
        **run.extra,
    }


def misses(
    run: Run,
    attack: str,
    pairs: list[tuple[Trigger, int]],
    idx: SetImages,
    target: Graph,
    data: Data,
    classes: list[str],
    opts: CompareOptions,
) -> list[dict[str, Any]]:
    """Each pair this detector detects under --goal: by how much, why, and a grid of examples."""
    out = []
    for (trigger, k), p, o in zip(pairs, idx.pos, run.pos, strict=True):
        rate = flag_rate(o.flagged)
        if not rate < opts.goal:
            continue
        miss: dict[str, Any] = {
            "detector": run.name,
            "target_class": k,
            "detection_rate": rate,
            "goal": opts.goal,
            "short_by": opts.goal - rate,
            "missed": int((~o.flagged).sum()),
            "reasons": miss_reasons(o, k),
            "examples": None,
        }
        where = np.flatnonzero(~o.flagged)[: opts.examples]
        if len(where):
            name = f"miss-{slug(attack)}-{slug(run.name)}"
            rel = f"{opts.dataset}/{name}" + (f"-t{k}.png" if len(pairs) > 1 else ".png")
            score = "H" if run.rule == "strip" else "KL"
            example_grid(
                Path(opts.out) / rel,
                data,
                p[where],
                trigger,
                target,
                run.graph,
                o,
                where,
                classes,
                score,
            )
            miss["examples"] = rel
        out.append(miss)
    return out


def evaluate_set(
    attack: str,
    folder: Path,
    specs: Sequence[AESpec],
    data: Data,
    opts: CompareOptions,
) -> dict[str, Any]:
    """Every detector on one model set: its json entry."""
    manifest = read_manifest(folder)
    raw = json.loads((folder / "manifest.json").read_text())
    chw = (manifest.input.channels, manifest.input.height, manifest.input.width)
    if tuple(data.test.images.shape[1:]) != chw:
        raise SystemExit(
            f"{folder} takes {chw} images; {opts.dataset} has {data.test.images.shape[1:]}"
        )
    pairs = backdoor_pairs(raw)
    if not pairs:
        raise SystemExit(f"{folder}: the manifest records no backdoor trigger to test")
    target = Graph.load(read_verified(folder, manifest.target), opts.threads)
    val, source = validation_indices(len(data.train), raw, opts.val_size, opts.seed)
    bank, calib = bank_and_calibration(val, opts.bank_size, opts.val_images, opts.seed)
    test = data.test_idx
    idx = SetImages(calib, bank, test, [test[data.test.labels[test] != k] for _, k in pairs])
    (probe,) = float_batches(data.test.images[test[: opts.batch_size]], opts.batch_size)
    warm_up(target, probe)

    runs: list[Run] = []
    ae_used: dict[str, dict[str, Any]] = {}
    for label, spec in aes_for(specs, attack).items():
        blob, ae_used[label] = ae_info(spec, folder, raw)
        ae = Graph.load(blob, opts.threads)
        try:
            warm_up(ae, probe)
        except Exception as exc:  # ORT's own errors: wrong input shape, names, ...
            raise SystemExit(
                f"--ae {label}: {ae_used[label]['file']} does not run on {chw} images: {exc}"
            ) from exc
        runs += ae_runs(label, ae, target, pairs, data, idx, opts)
    if opts.strip_n > 0:
        runs.append(strip_run(target, pairs, data, idx, raw, opts))
    if not runs:
        raise SystemExit("nothing to run: no --ae for this set and --strip-n 0")

    # The target's own predictions are the same in every run: take the first.
    first = runs[0]
    fired = [o.predicted == k for (_, k), o in zip(pairs, first.pos, strict=True)]
    timed_images = len(test) + sum(len(p) for p in idx.pos)
    return {
        "attack": attack,
        "model_set": str(folder),
        "name": manifest.name,
        "paper_trigger": attack == PAPER_ATTACK,
        "clean_accuracy": float((first.neg.predicted == data.test.labels[test]).mean()),
        "attack_success_rate": float(np.concatenate(fired).mean()),
        "n_negative": int(len(test)),
        "validation": {"n": int(len(calib)), "strip_bank": int(len(bank)), "source": source},
        "pairs": [
            {
                "target_class": k,
                "trigger": t.to_dict(),
                "n_positive": int(len(p)),
                "attack_success_rate": float(f.mean()) if len(f) else float("nan"),
            }
            for (t, k), p, f in zip(pairs, idx.pos, fired, strict=True)
        ],
        "aes": ae_used,
        "detectors": [detector_entry(run, pairs, timed_images) for run in runs],
        "misses": [
            m
            for run in runs
            for m in misses(run, attack, pairs, idx, target, data, list(manifest.classes), opts)
        ],
    }
