"""`training.audit --images DIR`: a user's images without labels, labelled with the target's own
classes. The tiny backdoored classifier as a model set, its images as a flat folder of PNGs (a
few broken files among them): the audit flags the real target class, the repair removes the
backdoor, and the report says where its labels came from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.support.tiny_backdoor import CLASSES, SIZE, TARGET, make_data
from tests.support.tiny_models import TinySpec, detrigger_graph, png_bytes, sha256_of
from training.audit.__main__ import main
from training.inversion.data import pseudo_labels, unlabelled_audit_data


def _model_set(target: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    shutil.copyfile(target, folder / "target.onnx")
    onnx.save(detrigger_graph(TinySpec(height=SIZE, width=SIZE)), folder / "detrigger.onnx")
    manifest = {
        "name": "tinyaudit",
        "input": {"height": SIZE, "width": SIZE, "channels": 1},
        "classes": [f"c{k}" for k in range(CLASSES)],
        "target": {"file": "target.onnx", "sha256": sha256_of(folder / "target.onnx"),
                   "input_name": "images", "output_name": "logits"},
        "detrigger": {"file": "detrigger.onnx", "sha256": sha256_of(folder / "detrigger.onnx"),
                      "input_name": "images", "output_name": "images_out"},
        "decision": {"rule": "class_change"},
    }  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_an_unlabelled_folder_is_audited_with_the_targets_labels(
    tiny_backdoored, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = tiny_backdoored
    source = _model_set(path, tmp_path / "tinyaudit")
    images = tmp_path / "images"
    images.mkdir()
    x, _ = make_data(2500, seed=21)
    for i, im in enumerate((x[:, 0] * 255).round().astype(np.uint8)):
        (images / f"{i:05d}.png").write_bytes(png_bytes(im))
    (images / "broken.png").write_bytes(b"not a png")
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "report"
    main([
        "--model-set", str(source), "--images", str(images), "--out", str(out),
        "--synth-images", "200", "--steps", "400", "--batch-size", "32", "--families", "none",
        "--unlearn-lr", "3e-3", "--unlearn-dilate", "0", "--threads", "1", "--no-progress",
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert "2500 images" in printed and "skipped 2 files" in printed
    assert "labelled with the target's own classes" in printed
    # the set records no validation split: the repair is calibrated on other held-out images
    assert f"calibrate {source} --data HELD_OUT_IMAGES --repaired" in printed
    report = json.loads((out / "audit.json").read_text())
    assert report["images"] == str(images) and report["dataset"] is None
    assert report["labels"] == "the target's own classes"
    assert report["command"].startswith(f"detrigger-guard audit --model-set {source} --images ")
    s = report["summary"]
    assert s["flagged"] and s["target_classes"] == [TARGET]
    assert report["data"]["test_images"] == 250 and report["data"]["synthesis_images"] == 200
    unlearned = s["repair"]["unlearning"]
    assert unlearned["clean_accuracy"] > 0.9  # agreement with the target on clean images
    assert (tmp_path / "tinyaudit-repaired" / "manifest.json").is_file()
    assert json.loads((source / "manifest.json").read_text())["audit"]["target_classes"] == [TARGET]


def test_the_splits_are_disjoint_and_too_few_images_are_refused() -> None:
    images = np.zeros((600, 1, 2, 2), np.uint8)
    ids = np.arange(600)  # as labels: which image went where
    data = unlabelled_audit_data(images, ids, ["a", "b", "c"], n_synth=50, seed=0)
    assert len(data.synth_x) == 50 and len(data.test_x) == 60
    # tuning, unlearning and evaluation images: disjoint, and all but the 50 of the synthesis
    labelled = np.concatenate([data.tune_y.numpy(), data.train_y.numpy(), data.test_y.numpy()])
    assert len(set(labelled.tolist())) == len(labelled) == 600 - 50
    assert len(data.tune_y) == (600 - 50 - 60) // 4 and len(data.train_y) == 600 - 50 - 60 - 122
    with pytest.raises(ValueError, match="too few for the audit"):
        unlabelled_audit_data(images[:100], ids[:100], ["a", "b", "c"], n_synth=50, seed=0)


def test_the_labels_are_the_targets_classes_batch_by_batch() -> None:
    def target(x: np.ndarray) -> np.ndarray:  # class 1 for a bright image, else class 0
        s = x.mean(axis=(1, 2, 3))
        return np.stack([0.5 - s, s - 0.5], axis=1)

    images = np.zeros((300, 1, 2, 2), np.uint8)
    images[::3] = 255
    assert pseudo_labels(target, images).tolist() == [1, 0, 0] * 100
