"""Detector repaired (contract.manifest.RepairedSpec): put a repaired copy of the target into a
model set and calibrate its threshold on clean images.

    detrigger-guard calibrate models/mnist --recorded-split --repaired models/mnist-repaired

The repaired graph is given as an ONNX file or as a model set folder (its target, e.g. the
audit's unlearned export SET-repaired). It must take the set's input (float32 NCHW in [0, 1],
a dynamic batch) and give one row of logits per image over the set's classes. It is written
into the set as ``repaired.onnx`` with a manifest entry, for the body of a ``with`` that
calibrates the set (the recorded split or new clean images; both calibrate every detector the
manifest has, this one included). If the body raises or leaves the entry uncalibrated, the set
is put back as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import ModelLoadError
from contract.manifest import GraphSpec, Manifest, read_manifest, read_verified
from training.evaluation.detectors import Graph, cpu_session
from training.nets.manifest_file import write_manifest

REPAIRED_FILE = "repaired.onnx"


def _source(given: Path) -> tuple[bytes, dict[str, Any]]:
    """The graph's bytes and what the entry records of where it came from."""
    if given.is_dir():
        try:
            manifest = read_manifest(given)
            data = read_verified(given, manifest.target)
        except ModelLoadError as exc:
            raise ValueError(
                f"--repaired {given}: not a model set whose target loads: {exc}"
            ) from exc
        raw = json.loads((given / "manifest.json").read_text())
        record: dict[str, Any] = {"model_set": str(given), "name": manifest.name}
        if isinstance(raw.get("repair"), dict):
            repair = raw["repair"]
            record["repair"] = {k: repair[k] for k in ("method", "source", "class") if k in repair}
        return data, record
    if not given.is_file():
        raise ValueError(f"--repaired {given}: no such file or model set folder")
    return given.read_bytes(), {"file": str(given)}


def _names(data: bytes, manifest: Manifest, given: Path) -> tuple[str, str]:
    """The graph's one input and its logits output (the only output, else the one named as the
    set's target output), checked on a batch of two of the set's images: one row of logits
    over the set's classes per image."""
    try:
        session = cpu_session(data, 1)
    except Exception as exc:
        raise ValueError(f"--repaired {given}: ONNX Runtime cannot load it: {exc}") from exc
    inputs, outputs = session.get_inputs(), [o.name for o in session.get_outputs()]
    if len(inputs) != 1:
        raise ValueError(f"--repaired {given}: {len(inputs)} inputs; a classifier has one")
    if len(outputs) == 1:
        output = outputs[0]
    elif manifest.target.output_name in outputs:
        output = manifest.target.output_name
    else:
        raise ValueError(
            f"--repaired {given}: outputs {outputs}, none named {manifest.target.output_name!r} "
            "(the set's target output): give a graph with one logits output"
        )
    spec = manifest.input
    x = np.zeros((2, spec.channels, spec.height, spec.width), np.float32)
    try:
        (logits,) = session.run([output], {inputs[0].name: x})
    except Exception as exc:
        raise ValueError(
            f"--repaired {given}: fails on two float32 images of shape {x.shape[1:]} (the set's "
            f"input, NCHW in [0, 1], a dynamic batch): {exc}"
        ) from exc
    if np.shape(logits) != (2, len(manifest.classes)):
        raise ValueError(
            f"--repaired {given}: output {output!r} has shape {np.shape(logits)} for 2 images; "
            f"the set has {len(manifest.classes)} classes: one row of logits per image"
        )
    return inputs[0].name, output


@contextlib.contextmanager
def add_repaired(
    folder: Path, given: Path, score: str, command: str, repair: dict | None = None
) -> Iterator[dict]:
    """Write ``given``'s graph into the set ``folder`` as detector repaired (threshold not yet
    set) for the body of the ``with``, which must calibrate it; else the graph file and the
    manifest are put back as they were. ``repair``: how the graph was made, recorded in the
    entry's source (a model set's own ``repair`` record is read from its manifest). Yields the
    entry's source record."""
    manifest_path = folder / "manifest.json"
    before = manifest_path.read_bytes()
    manifest = read_manifest(folder)
    data, source = _source(given)
    input_name, output_name = _names(data, manifest, given)
    path = folder / REPAIRED_FILE
    old_graph = path.read_bytes() if path.is_file() else None
    raw = json.loads(before)
    source["command"] = command
    if repair is not None:
        source["repair"] = repair
    entry = {
        "file": REPAIRED_FILE,
        "sha256": hashlib.sha256(data).hexdigest(),
        "input_name": input_name,
        "output_name": output_name,
        "size_bytes": len(data),
        "score": score,
        "threshold": 1.0,  # replaced by the calibration in the body
        "source": source,
    }
    raw.setdefault("detectors", {})["repaired"] = entry
    try:
        path.write_bytes(data)
        write_manifest(folder, raw)
        yield source
        spec = read_manifest(folder).detectors.repaired
        if spec is None or spec.calibration is None:
            raise ValueError(f"{folder}: detector repaired was added but not calibrated")
    except BaseException:
        if old_graph is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(old_graph)
        manifest_path.write_bytes(before)
        raise


def logits_of(
    folder: Path,
    manifest: Manifest,
    spec: GraphSpec,
    batches: Iterable[np.ndarray],
    threads: int,
) -> np.ndarray:
    """A classifier graph of the set, one session, on float batches (B, C, H, W) in [0, 1]
    (training.evaluation.detectors.float_batches): logits (N, K), one row per image."""
    graph = Graph(
        cpu_session(read_verified(folder, spec), threads), spec.input_name, spec.output_name
    )
    k, parts = len(manifest.classes), []
    for x in batches:
        logits = np.asarray(graph(x), np.float32)
        if logits.shape != (len(x), k):
            raise ValueError(
                f"{folder / spec.file}: logits {logits.shape}; expected ({len(x)}, {k})"
            )
        parts.append(logits)
    return np.concatenate(parts)


def repaired_logits(
    folder: Path, manifest: Manifest, batches: Iterable[np.ndarray], threads: int
) -> np.ndarray:
    """The set's repaired graph on float batches: logits (N, K), as :func:`logits_of`."""
    spec = manifest.detectors.repaired
    assert spec is not None, "the set has no detectors.repaired"
    return logits_of(folder, manifest, spec, batches, threads)


def calibrated_entry(
    old: dict[str, Any], measured: dict[str, Any], fields: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest's detectors.repaired entry ``old`` with the threshold that ``measured``
    (training.evaluation.calibration.calibrate_decision of the target's and the repaired
    graph's logits on clean images) set, and its calibration record, the replaced one kept
    under ``previous``."""
    record = {**measured, **fields}
    if old.get("calibration"):
        previous = {k: v for k, v in old["calibration"].items() if k != "previous"}
        record["previous"] = {"threshold": old.get("threshold"), "calibration": previous}
    return {**old, "threshold": measured["threshold"], "calibration": record}, record
