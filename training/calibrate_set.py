"""Re-threshold an existing model set on new clean images (issue 18):

    detrigger-guard calibrate SET --data DIR

Every image of --data serves calibration (the set's AE must never have trained on them): the
contract's score is thresholded for --target-fpr, STRIP's bank is redrawn and its threshold set,
and the estimates are measured again (training/evaluation/calibration.py). The set is copied into
a staging folder, rewritten there, checked, and renamed into place: a failed run leaves the old
set as it was.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contract.manifest import read_manifest
from training import evidence
from training.data.folders import read_source
from training.evaluation.calibration import CalibrationOptions, calibrate_folder
from training.evaluation.publish import publish, staging_dir
from training.evaluation.set_check import check_set
from training.evaluation.set_report import fpr_line, write_report


@dataclass
class CalibrateOptions:
    model_set: str
    data: str
    data_dir: str | None = None
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    command: str = ""


def calibrate(opts: CalibrateOptions, verify=None, log=print) -> dict[str, Any]:
    t0 = time.time()
    for problem in opts.calibration.problems():
        raise ValueError(problem)
    folder = Path(opts.model_set)
    manifest = read_manifest(folder)
    chw = (manifest.input.channels, manifest.input.height, manifest.input.width)
    images, summary = read_source(opts.data, chw, opts.data_dir)
    log(summary.line())
    return calibrate_images(opts, images, summary.line(), t0, verify, log)


def calibrate_images(
    opts: CalibrateOptions,
    images: np.ndarray,
    data_line: str,
    t0: float | None = None,
    verify=None,
    log=print,
    keep: tuple[str, ...] = (),
) -> dict[str, Any]:
    """:func:`calibrate` on images already read, uint8 (N, C, H, W) at the set's input size
    (fit's twin and audit: fit's validation split), ``data_line`` saying what they are. The
    new report keeps the ``keep`` fields of the set's report (fit's: its data, target and
    training), where it has them."""
    t0 = time.time() if t0 is None else t0
    folder = Path(opts.model_set)
    manifest = read_manifest(folder)
    earlier = folder / "report.json"
    kept = json.loads(earlier.read_text()) if keep and earlier.is_file() else {}
    tmp = staging_dir(folder)
    try:
        shutil.copytree(folder, tmp, dirs_exist_ok=True)
        calibration = calibrate_folder(tmp, images, opts.calibration, f"calibration: {opts.data}")
        report = {
            "name": manifest.name,
            "command": opts.command or " ".join(sys.argv),
            "seed": opts.calibration.seed,
            "hardware": evidence.onnx_hardware(opts.calibration.threads),
            "versions": evidence.versions(evidence.ONNX_PACKAGES),
            "data": [data_line],
            "calibration": calibration,
            "wall_seconds": round(time.time() - t0, 1),
        }
        report.update({k: kept[k] for k in keep if k in kept})
        write_report(tmp, report)

        def checks(staged: Path) -> None:
            _, lines = check_set(staged)
            for line in lines + (verify(staged) if verify else []):
                log(f"check: {line}")

        publish(tmp, folder, checks)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log(fpr_line(calibration))
    return report
