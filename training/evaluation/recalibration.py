"""Re-threshold a model set's detectors on the validation split its manifest records (issue 22):

    detrigger-guard calibrate models/cifar10 --recorded-split

For a set made by this pipeline (its manifest records ``training.validation_split``: training
images its target and AE never trained on), every validation image runs once through the
guard's own code (contract.fusion: AE(x), then one target call on [x; AE(x); STRIP's copies]),
and each detector's threshold is set again for --target-fpr at --confidence
(training/evaluation/metrics.py, allowed_exceedances: at 0.95, the FPR on new clean images is
<= --target-fpr with probability >= 0.95; off: the plain quantile, the rule before issue 22):
- the de-trigger decision (``decision.threshold``; its rule and score stay) on every validation
  image, never below --score-floor (as make reproduce: float rounding between runtimes must not
  flag an image; a floor only lowers the FPR);
- STRIP (``detectors.strip.threshold``) on the validation images less its bank;
- detector both (``detectors.both``) on the same images as STRIP;
- detector repaired (``detectors.repaired.threshold``), on every validation image, with the
  de-trigger decision's floor, and detector detrigger_or_repaired (``detectors.
  detrigger_or_repaired``) on the same images, each of its thresholds at least that floor;
  ``only_repaired`` (calibrate --repaired) sets these two alone.

Only thresholds and calibration records change; each record keeps the one it replaces under
``previous``. The graphs, the bank and every other file stay byte for byte (checked before the
manifest is written), and the test split is never read. `detrigger-guard calibrate SET --data`
re-thresholds a set on other clean images and redraws STRIP's bank; this job keeps the images
and the bank the set was calibrated with.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from contract.manifest import Manifest, read_manifest
from contract.scoring import SCORES
from contract.strip import flag
from training import evidence
from training.data.datasets import DATASETS, load_dataset
from training.evaluation import onepass
from training.evaluation.calibration import calibrate_decision
from training.evaluation.detection import MIN_THRESHOLD
from training.evaluation.detectors import float_batches
from training.evaluation.fusion import (
    detrigger_or_repaired_entry,
    detrigger_or_repaired_line,
    entry_for,
    put_entry,
)
from training.evaluation.fusion import summary_line as both_line
from training.evaluation.metrics import (
    DEFAULT_CONFIDENCE,
    calibration_record,
    confidence_note,
    min_calibration_images,
    too_few_message,
)
from training.evaluation.repaired import calibrated_entry, repaired_logits
from training.evaluation.strip import quantiles, strip_threshold, validation_indices
from training.nets.manifest_file import write_manifest


@dataclass
class RecalibrateOptions:
    model_set: str
    dataset: str | None = None  # of the validation split; None: the one the manifest records
    data_dir: str | None = None
    target_fpr: float | None = None  # None: the decision's recorded target FPR
    confidence: float = DEFAULT_CONFIDENCE
    score_floor: float | None = None  # None: MIN_THRESHOLD of the set's score
    batch_size: int = 64
    threads: int = 0
    command: str = ""
    # only detector repaired (just added by calibrate --repaired): the other detectors keep
    # their thresholds and records
    only_repaired: bool = False

    def problems(self) -> list[str]:
        out = []
        if self.target_fpr is not None and not 0.0 < self.target_fpr < 0.5:
            out.append(f"--target-fpr {self.target_fpr} must lie in (0, 0.5)")
        if self.batch_size < 1:
            out.append("--batch-size must be at least 1")
        if self.dataset is not None and self.dataset not in DATASETS:
            out.append(f"--dataset {self.dataset!r}: allowed: {', '.join(DATASETS)}")
        return out


def recorded_dataset(folder: Path, raw: dict) -> str:
    """The dataset of the split the manifest `raw` of `folder` records; ValueError when it names
    none."""
    dataset = ((raw.get("training") or {}).get("target") or {}).get("dataset")
    if dataset not in DATASETS:
        raise ValueError(f"{folder}: give --dataset (the manifest names {dataset!r})")
    return dataset


def recorded_target_fpr(manifest: Manifest) -> float:
    """The FPR the set's decision was calibrated for (0.01 when it records none)."""
    recorded = manifest.decision.calibration
    return (recorded.target_fpr if recorded else None) or 0.01


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file of the set but its manifest: what this job must leave alone."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def previous(record: Any) -> Any:
    """The record being replaced, without its own `previous` (one level is kept)."""
    if isinstance(record, dict):
        return {k: v for k, v in record.items() if k != "previous"}
    return record


def recalibrate(args: RecalibrateOptions, log=print) -> dict[str, Any]:
    """Re-threshold the set `args.model_set` in place (its manifest only); ValueError when it
    cannot be done, the set then left as it was."""
    t0 = time.time()
    for problem in args.problems():
        raise ValueError(problem)
    folder = Path(args.model_set)
    if not (folder / "manifest.json").is_file():
        raise ValueError(f"{folder}: no manifest.json here (docs/model-contract.md)")
    command = args.command or " ".join(sys.argv)

    # The set: validated, and raw to write back field for field.
    manifest = read_manifest(folder)
    raw = json.loads((folder / "manifest.json").read_text())
    untouched = file_digests(folder)
    training = raw.get("training") or {}
    if not (training.get("validation_split") or {}).get("n"):
        raise ValueError(
            f"{folder}: the manifest records no validation split, so the images its target and "
            "AE never trained on are unknown; give --data DIR (new clean images) instead"
        )
    dataset = args.dataset or recorded_dataset(folder, raw)
    target_fpr = args.target_fpr or recorded_target_fpr(manifest)
    confidence = args.confidence
    spec = manifest.detectors.strip
    bank_indices = (spec.bank.model_extra or {}).get("indices") if spec is not None else None
    if spec is not None and not bank_indices and not args.only_repaired:
        raise ValueError(
            f"{folder}: the STRIP bank records no indices into the dataset, so its calibration "
            "images cannot be drawn again; give --data DIR (new clean images) instead"
        )

    # The data: the validation split; STRIP and both leave out the bank images.
    train = load_dataset(dataset, "train", args.data_dir)
    val, source = validation_indices(len(train), raw, 5000, 0)
    keep = ~np.isin(val, np.asarray(bank_indices or [], np.int64))
    for n in (len(val), int(keep.sum())):
        if n < min_calibration_images(target_fpr, confidence):
            raise ValueError(f"{folder}: {too_few_message(n, target_fpr, confidence)}")
    if args.only_repaired and manifest.detectors.repaired is None:
        raise ValueError(f"{folder}: no detectors.repaired to calibrate")
    # STRIP's copies only where STRIP is re-thresholded
    lx, lae, entropy = onepass.outputs(
        folder,
        manifest,
        train.images[val],
        args.batch_size,
        args.threads,
        strip=not args.only_repaired,
    )
    d = manifest.decision
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    fields = {
        "split": "validation",
        "source": source,
        "dataset": dataset,
        "command": command,
        "hardware": evidence.onnx_hardware(args.threads),
        "versions": evidence.versions(evidence.ONNX_PACKAGES),
        "created": created,
    }
    lines, out = [], {"model_set": str(folder), "target_fpr": target_fpr}

    # The de-trigger decision, on every validation image.
    ae_floor = args.score_floor if args.score_floor is not None else MIN_THRESHOLD[d.score]
    if args.only_repaired:
        pass  # the de-trigger decision keeps its threshold and record
    elif d.rule == "score":
        floor = ae_floor
        decision, measured = calibrate_decision(lx, lae, d.score, target_fpr, confidence, floor)
        old = raw["decision"]
        kept = {k: v for k, v in (old.get("calibration") or {}).items() if k == "selected_on"}
        raw["decision"] = {
            **old,
            "threshold": decision.threshold,
            "calibration": {
                **measured,
                **kept,
                **fields,
                "previous": {
                    "threshold": old.get("threshold"),
                    "calibration": previous(old.get("calibration")),
                },
            },
        }
        out["decision"] = raw["decision"]["calibration"]
        lines.append(
            f"{folder}: de-trigger AE, {d.score} > {decision.threshold:.6g} (was "
            f"{old.get('threshold'):.6g}); clean FPR {measured['false_positive']['rate']:.4f} on "
            f"{measured['n']} validation images" + confidence_note(measured)
        )
    else:
        lines.append(f"{folder}: de-trigger AE, rule {d.rule}: no threshold to set")

    # Detector repaired and detrigger_or_repaired, on every validation image.
    if manifest.detectors.repaired is not None:
        score = manifest.detectors.repaired.score
        batches = float_batches(train.images[val], args.batch_size)
        lr = repaired_logits(folder, manifest, batches, args.threads)
        floor = args.score_floor if args.score_floor is not None else MIN_THRESHOLD[score]
        old = raw["detectors"]["repaired"]
        _, measured = calibrate_decision(lx, lr, score, target_fpr, confidence, floor)
        entry, record = calibrated_entry(old, measured, fields)
        raw["detectors"]["repaired"] = entry
        out["repaired"] = record
        was = f"was {old['threshold']:.6g}" if old.get("calibration") else "new"
        lines.append(
            f"{folder}: repaired graph, {score} > {entry['threshold']:.6g} ({was}); clean FPR "
            f"{record['false_positive']['rate']:.4f} on {record['n']} validation images"
            + confidence_note(record)
        )
        old_fused = raw["detectors"].get("detrigger_or_repaired")
        fused = detrigger_or_repaired_entry(
            raw,
            SCORES[d.score](lx, lae),
            SCORES[score](lx, lr),
            target_fpr,
            fields,
            confidence=confidence,
            floors=(ae_floor, floor),
        )
        if isinstance(old_fused, dict):
            fused["calibration"]["previous"] = {
                k: previous(v) for k, v in old_fused.items() if k != "description"
            }
        out["detrigger_or_repaired"] = fused["calibration"]
        lines.append(detrigger_or_repaired_line(folder, fused))

    # STRIP and detector both, on the validation images less the bank.
    if spec is not None and entropy is not None:
        h = entropy[keep]
        threshold = strip_threshold(h, target_fpr, confidence)
        old = raw["detectors"]["strip"]
        record = calibration_record(flag(h, threshold), target_fpr, confidence)
        strip_cal = {
            **record,
            "false_positive_rate": record["false_positive"]["rate"],
            "clean_accuracy": float((lx[keep].argmax(1) == train.labels[val[keep]]).mean()),
            "entropy_bits": quantiles(h),
            **fields,
            "seed": spec.seed,
            "previous": {
                "threshold": old.get("threshold"),
                "calibration": previous(old.get("calibration")),
            },
        }
        raw["detectors"]["strip"] = {**old, "threshold": threshold, "calibration": strip_cal}
        out["strip"] = strip_cal
        lines.append(
            f"{folder}: STRIP, entropy < {threshold:.6g} bits (was {old['threshold']:.6g}); "
            f"clean FPR {record['false_positive']['rate']:.4f} on {record['n']} validation "
            "images" + confidence_note(record)
        )
        scores = SCORES[d.score](lx[keep], lae[keep])
        old_both = raw["detectors"].get("both")
        both = entry_for(raw, scores, h, target_fpr, fields, confidence=confidence)
        if isinstance(old_both, dict):
            both["calibration"]["previous"] = {
                k: previous(v) for k, v in old_both.items() if k != "description"
            }
        put_entry(raw, both)
        out["both"] = both["calibration"]
        lines.append(both_line(folder, both))

    # Write: the manifest only, after checking that nothing else of the set changed.
    Manifest.model_validate(raw)  # what the service will read
    if file_digests(folder) != untouched:
        raise ValueError(f"{folder}: a file of the set changed during the run; nothing written")
    write_manifest(folder, raw)
    assert read_manifest(folder).decision.threshold == raw["decision"]["threshold"]
    out["wall_seconds"] = round(time.time() - t0, 1)
    for line in lines:
        log(line)
    return out
