"""bench.byom's `backdoor --set-from`: the fine-tuned target becomes a model set that the
service loads, with the backdoor recorded and every threshold set again on the given images."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from bench.byom import as_set
from cli.check import service_load

RECORD = {
    "backdoor": {"target_class": 1, "trigger": {"kind": "blend", "alpha": 0.1}},
    "attack": "blend",
}


def test_the_new_target_becomes_a_calibrated_set(both_set: Path, kl_set: Path, tmp_path) -> None:
    out = tmp_path / "bd"
    out.mkdir()
    shutil.copyfile(kl_set / "target.onnx", out / "target.onnx")  # another set's target
    images = np.random.default_rng(0).integers(0, 256, (500, 1, 28, 28), dtype=np.uint8)
    before = json.loads((both_set / "manifest.json").read_text())

    dest = as_set(both_set, out, RECORD, images)

    m = json.loads((dest / "manifest.json").read_text())
    assert dest == out / "set" and service_load(dest)
    assert m["backdoor"] == RECORD["backdoor"] and m["name"] == "tinyboth-blend"
    target = (dest / m["target"]["file"]).read_bytes()
    assert target == (out / "target.onnx").read_bytes()
    assert m["target"]["sha256"] == hashlib.sha256(target).hexdigest()
    # calibrated again on these images: the decision, STRIP and both
    assert m["decision"]["calibration"]["source"] == "validation: the held-out split"
    assert m["decision"] != before["decision"]
    assert m["detectors"]["strip"] != before["detectors"]["strip"]
    assert np.load(dest / "strip_bank.npy").shape[1:] == (1, 28, 28)
    assert "audit" not in m and "samples" not in m
