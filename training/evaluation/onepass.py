"""A set's three detectors measured the way the guard runs them, from one pass per image
(contract.fusion.run_both: AE(x), then one target call on [x; AE(x); STRIP's copies]), on a
seeded subset of a test split. What training.fusion_report and training.calibration_report
share: the subset, the pass, the manifest's decisions read off its outputs, and each rule as
text, the command-line options that pick the subset and the pass's batching, and the naming of
a measured set's triggers and its table of images, accuracy and attack success."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from contract.fusion import decide_both, decide_detrigger_or_repaired, run_both
from contract.manifest import Manifest, read_verified
from contract.scoring import decide
from contract.strip import Strip, flag
from training.evaluation.detectors import Graph, Transform, float_batches
from training.evaluation.markdown import pct
from training.evaluation.repaired import repaired_logits


def add_options(p: argparse.ArgumentParser) -> None:
    """--clean-images, --triggered-images, --seed, --batch-size, --threads."""
    p.add_argument(
        "--clean-images",
        type=int,
        default=0,
        help="clean test images per set, a seeded subset; 0 = all (default: 0)",
    )
    p.add_argument(
        "--triggered-images",
        type=int,
        default=0,
        help="triggered test images per trigger, a seeded subset; 0 = all (default: 0)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the subsets (default: 0)")
    p.add_argument(
        "--batch-size", type=int, default=64, help="inputs per target call (default: 64)"
    )
    p.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime intra-op threads; 0 = its default"
    )


def check_options(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Stop with a usage error on a negative subset or a batch below 1."""
    if args.clean_images < 0 or args.triggered_images < 0 or args.batch_size < 1:
        p.error("--clean-images and --triggered-images must be >= 0, --batch-size >= 1")


def subset(n: int, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset of range(n) of `limit` elements (all when 0)."""
    if not limit or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def repaired_outputs(
    folder: Path,
    manifest: Manifest,
    images: np.ndarray,
    batch_size: int,
    threads: int,
    transform: Transform | None = None,
) -> np.ndarray | None:
    """uint8 images (N, C, H, W) -> the repaired graph's logits (N, K) on them, `transform`ed
    as in :func:`outputs`; None for a set without detectors.repaired."""
    if manifest.detectors.repaired is None:
        return None
    return repaired_logits(folder, manifest, float_batches(images, batch_size, transform), threads)


def outputs(
    folder: Path,
    manifest: Manifest,
    images: np.ndarray,
    batch_size: int,
    threads: int,
    transform: Transform | None = None,
    strip: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """uint8 images (N, C, H, W) -> (logits on x, logits on AE(x), STRIP entropy), each (N, ...),
    the images `transform`ed (a trigger stamped) after the decoder's float conversion. A set
    without STRIP, or ``strip`` False, runs as the guard's detrigger detector (the target once
    on [x; AE(x)]) and gives no entropy (None)."""
    spec = manifest.detectors.strip if strip else None
    chw = (manifest.input.channels, manifest.input.height, manifest.input.width)
    superimposed = Strip.load(folder, spec, chw) if spec is not None else None
    ae = Graph.load(read_verified(folder, manifest.detrigger), threads)
    target = Graph.load(read_verified(folder, manifest.target), threads)
    lx, lae, h = [], [], []
    for x in float_batches(images, batch_size, transform):
        if superimposed is not None:
            a, b, e = run_both(x, superimposed, ae, target)
            h.append(e)
        else:
            logits = target(np.concatenate([x, ae(x)]))
            a, b = logits[: len(x)], logits[len(x) :]
        lx.append(a)
        lae.append(b)
    return np.concatenate(lx), np.concatenate(lae), (np.concatenate(h) if h else None)


def decisions(
    manifest: Manifest,
    lx: np.ndarray,
    lae: np.ndarray,
    h: np.ndarray | None,
    lr: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per detector the manifest has, its flags (N,) on these outputs (detectors repaired and
    detrigger_or_repaired: when the repaired graph's logits ``lr`` are given)."""
    out = {"detrigger": decide(lx, lae, manifest.decision).flagged}
    repaired, fused = manifest.detectors.repaired, manifest.detectors.detrigger_or_repaired
    if repaired is not None and lr is not None:
        out["repaired"] = decide(lx, lr, repaired.decision).flagged
        if fused is not None:
            out["detrigger_or_repaired"] = decide_detrigger_or_repaired(
                lx, lae, lr, fused, repaired
            )[0].flagged
    if manifest.detectors.strip is not None:
        out["strip"] = flag(h, manifest.detectors.strip.threshold)
    if manifest.detectors.both is not None:
        out["both"] = decide_both(lx, lae, h, manifest.detectors.both).flagged
    return out


def rules(manifest: Manifest) -> dict[str, str]:
    """Per detector the manifest has, its decision rule as text."""
    d, s, b = manifest.decision, manifest.detectors.strip, manifest.detectors.both
    out = {
        "detrigger": f"{d.score} > {d.threshold:.4g}"
        if d.rule == "score"
        else "class changes after the AE"
    }
    if s is not None:
        out["strip"] = f"entropy < {s.threshold:.4g} bits"
    if b is not None:
        out["both"] = f"{b.score} > {b.ae_threshold:.4g} or entropy < {b.strip_threshold:.4g} bits"
    r = manifest.detectors.repaired
    if r is not None:
        out["repaired"] = f"{r.score} > {r.threshold:.4g} against the repaired graph"
    f = manifest.detectors.detrigger_or_repaired
    if f is not None and r is not None:
        out["detrigger_or_repaired"] = (
            f"{f.score} > {f.ae_threshold:.4g} or {r.score} > {f.repaired_threshold:.4g} "
            "against the repaired graph"
        )
    return out


def set_name(s: dict[str, Any]) -> str:
    """A measured set's name (its manifest's; the folder's in reports from before names)."""
    return str(s.get("name") or Path(s["model_set"]).name)


def triggers_of(s: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
    """(row label, trigger) per trigger of a measured set; a set of several backdoors names each
    by its target class; a set without one gives one row with None."""
    name, triggers = set_name(s), s["triggers"]
    if len(triggers) <= 1:
        return [(name, triggers[0] if triggers else None)]
    return [(f"{name} (to class {t['target_class']})", t) for t in triggers]


def images_lines(report: dict[str, Any]) -> list[str]:
    """Per set and trigger: the test images measured, the clean accuracy, the attack success."""
    lines = [
        "| set | clean test images | triggered test images | clean accuracy | attack success |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in report["sets"]:
        for label, t in triggers_of(s):
            lines.append(
                f"| {label} | {s['clean_images']} of {s['clean_images_of']} | "
                + (f"{t['images']} of {t['images_of']}" if t else "-")
                + f" | {pct(s['clean_accuracy'])} | "
                + (pct(t["attack_success_rate"]) if t else "-")
                + " |"
            )
    return lines
