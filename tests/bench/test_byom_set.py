"""bench.byom's `backdoor --set-from`: the fine-tuned target becomes a model set that the
service loads, with the backdoor recorded and every threshold set again on the given images;
`adopt`: the same from a backdoored set made elsewhere, on the split its target was held out
from; and `measure`: a set's FPR and detection of a recorded trigger on a dataset's test
split."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench.byom import adopt, as_set, measure
from cli.check import service_load
from contract.errors import DetectorNotAvailable
from tests.support.tiny_models import TinySpec, clean_image
from tests.training.conftest import write_idx

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
    assert "shift" not in m["decision"]["calibration"]  # never trained on: used as they are
    assert m["decision"] != before["decision"]
    assert m["detectors"]["strip"] != before["detectors"]["strip"]
    assert np.load(dest / "strip_bank.npy").shape[1:] == (1, 28, 28)
    assert "audit" not in m and "samples" not in m
    assert m["decision"]["score"] == before["decision"]["score"]  # the set's own rule


def test_adopt_takes_a_backdoored_sets_target_and_its_held_out_split(
    both_set: Path, kl_set: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(1)
    data = tmp_path / "mnist"
    data.mkdir()
    write_idx(data / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (900, 28, 28)))
    write_idx(data / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 900))
    source = tmp_path / "suite-blend"  # a suite set: its own AE and rule, which adopt drops
    shutil.copytree(kl_set, source)
    raw = json.loads((source / "manifest.json").read_text())
    raw["backdoor"] = RECORD["backdoor"]
    raw["training"] = {"target": {"dataset": "mnist", "val_size": 600, "seed": 0}}
    (source / "manifest.json").write_text(json.dumps(raw))
    shipped = json.loads((both_set / "manifest.json").read_text())

    dest = adopt(source, both_set, tmp_path / "out", str(tmp_path), "blend")

    m = json.loads((dest / "manifest.json").read_text())
    assert service_load(dest) and m["name"] == "tinyboth-blend"
    assert m["backdoor"] == RECORD["backdoor"]
    assert (dest / "target.onnx").read_bytes() == (kl_set / "target.onnx").read_bytes()
    assert (dest / "detrigger.onnx").read_bytes() == (both_set / "detrigger.onnx").read_bytes()
    assert m["decision"]["score"] == shipped["decision"]["score"]
    # calibrated on the 600 held-out images, less STRIP's bank of 64
    assert m["decision"]["calibration"]["false_positive"]["n"] == 600 - 64
    record = json.loads((tmp_path / "out" / "backdoor.json").read_text())
    assert record["adopted_from"] == str(source) and record["attack"] == "blend"
    with pytest.raises(SystemExit, match="no backdoor, or no training.target split"):
        adopt(kl_set, both_set, tmp_path / "again", str(tmp_path), "none")


def tiny_test_split(folder: Path) -> Path:
    """The tiny set's classes 1..9 (the bright band of its class), 90 images, as an MNIST-style
    test split in `folder`/mnist."""
    labels = (1 + np.arange(90) % 9).astype(np.uint8)
    spec = TinySpec(name="tinykl")
    images = np.stack([clean_image(spec, int(k), seed=i) for i, k in enumerate(labels)])
    data = folder / "mnist"
    data.mkdir()
    write_idx(data / "t10k-images-idx3-ubyte.gz", images)
    write_idx(data / "t10k-labels-idx1-ubyte.gz", labels)
    return data


def test_measure_counts_clean_flags_and_triggered_detections(kl_set: Path, tmp_path: Path) -> None:
    data = tiny_test_split(tmp_path)
    out = measure(kl_set, "mnist", kl_set / "manifest.json", str(data), at_fpr=(0.05,))

    assert out["fpr_clean_test"]["n"] == 90 and out["fpr_clean_test"]["k"] == 0
    det = out["detection_triggered_test"]
    assert det["n"] == 90 and det["k"] == 90  # the AE removes the square: every one flagged
    assert out["attack_success"] == 1.0
    assert out["detection_fired"]["n"] == 90 and out["detection_fired"]["k"] == 90
    moved = out["at_test_fpr"]["0.05"]
    assert moved["fpr_clean_test"]["k"] <= 4 and moved["detection_triggered_test"]["k"] == 90
    assert moved["detection_fired"]["k"] == 90


def test_measure_runs_the_named_detector(either_set: Path, kl_set: Path, tmp_path: Path) -> None:
    data = tiny_test_split(tmp_path)
    out = measure(
        either_set, "mnist", either_set / "manifest.json", str(data),
        detector="detrigger_or_repaired",
    )  # fmt: skip
    assert out["detector"] == "detrigger_or_repaired"
    assert out["fpr_clean_test"]["k"] == 0 and out["detection_triggered_test"]["k"] == 90
    with pytest.raises(DetectorNotAvailable):
        measure(kl_set, "mnist", kl_set / "manifest.json", str(data), detector="repaired")


def test_measure_against_a_repaired_target_flags_what_the_two_disagree_on(
    kl_set: Path, tmp_path: Path
) -> None:
    """The 'repaired' target here is the set's own target behind its AE (one ONNX graph), which
    ignores the corner square as an unlearned target would: triggered images change class,
    clean ones do not."""
    import onnx
    from onnx import compose

    ae, target = (onnx.load(kl_set / f) for f in ("detrigger.onnx", "target.onnx"))
    joined = compose.merge_models(
        compose.add_prefix(ae, "ae/"),
        compose.add_prefix(target, "t/"),
        io_map=[("ae/" + ae.graph.output[0].name, "t/" + target.graph.input[0].name)],
    )
    repaired = tmp_path / "repaired"
    shutil.copytree(kl_set, repaired)
    onnx.save(joined, repaired / "target.onnx")
    manifest = json.loads((repaired / "manifest.json").read_text())
    manifest["target"]["input_name"] = "ae/" + ae.graph.input[0].name
    manifest["target"]["output_name"] = "t/" + target.graph.output[0].name
    graph = (repaired / "target.onnx").read_bytes()
    manifest["target"]["sha256"] = hashlib.sha256(graph).hexdigest()
    (repaired / "manifest.json").write_text(json.dumps(manifest))

    data = tiny_test_split(tmp_path)
    out = measure(kl_set, "mnist", kl_set / "manifest.json", str(data), (0.05,), repaired)

    a = out["against"]
    assert a["class_change"]["fpr_clean_test"]["k"] == 0
    assert a["class_change"]["detection_triggered_test"]["k"] == 90
    moved = a["prob_drop_at_test_fpr"]["0.05"]
    assert moved["fpr_clean_test"]["k"] <= 4 and moved["detection_triggered_test"]["k"] == 90
