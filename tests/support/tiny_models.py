"""Tiny model sets, built with onnx.helper (no torch), that behave like a backdoored pair.

- The "de-trigger AE" multiplies the image by a mask that zeroes the top-left 4x4 patch.
- The target's logits are a linear function of the pixels: class 0 reads the top-left patch
  (weight 2 per pixel), class k >= 1 reads a horizontal band k (weight 0.5 per pixel).

A clean image of class k (band k bright, patch dark) is class k before and after the AE. The
same image with the 4x4 white trigger is class 0 (32 > 16); the AE removes the patch, the class
goes back to k, so the class changes and the image is flagged, as in Kwon's paper.

With ``strip_n > 0`` the set also ships a STRIP bank (clean images, ``strip_bank_per_class`` of
each class 1..K-1). A clean image of class k added to a bank image of class j != k lights two
bands (logits 16 and 16: about 1 bit of entropy), so its mean entropy over n copies is at least
1 - bank_per_class / n bits; a triggered image stays class 0 (32 > 16) in every copy, about 0
bits. The default threshold 0.3 bits separates the two. With ``both`` it also offers detector
both, the two fused by an OR with hand-set thresholds. With ``repaired`` it offers detector
repaired: repaired.onnx is the target with class 0's patch weights zeroed (the backdoor
unlearned), so a triggered image is class 0 on the target and its band's class on the repaired
graph (prob_drop near 1), and a clean image is the same class on both (prob_drop 0). With
``detrigger_or_repaired`` as well it offers that detector, the AE and the repaired graph fused by
an OR with hand-set thresholds.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

PATCH = 4
OPSET = 17


@dataclass(frozen=True)
class TinySpec:
    name: str = "tiny"
    height: int = 28
    width: int = 28
    channels: int = 1
    classes: int = 10
    rule: str = "class_change"
    score: str = "prob_drop"
    threshold: float = 0.5
    strip_n: int = 0  # > 0: ship a STRIP bank with n superimpositions per input
    strip_threshold: float = 0.3
    strip_bank_per_class: int = 3
    # (ae_threshold, strip_threshold): with strip_n > 0, also detector both (contract.fusion)
    # on the decision's score, hand-set.
    both: tuple[float, float] | None = None
    # The target adds log(max pixel) to every logit: no change for an image with any light
    # pixel, -inf logits (so NaN scores) for an all-black image or de-triggered copy.
    nonfinite_when_black: bool = False
    # detector repaired with this prob_drop threshold (hand-set): repaired.onnx ships too
    repaired: float | None = None
    # (ae_threshold, repaired_threshold): with repaired, also detector detrigger_or_repaired
    # (contract.fusion) on the decision's score, hand-set
    detrigger_or_repaired: tuple[float, float] | None = None

    def band_rows(self, k: int) -> tuple[int, int]:
        top = PATCH + 2 + 2 * (k - 1)
        return top, top + 2

    def band_cols(self) -> tuple[int, int]:
        return 6, min(self.width, 22)


def _image_input(spec: TinySpec, name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(
        name, TensorProto.FLOAT, ["N", spec.channels, spec.height, spec.width]
    )


def detrigger_graph(spec: TinySpec) -> onnx.ModelProto:
    mask = np.ones((1, spec.channels, spec.height, spec.width), dtype=np.float32)
    mask[:, :, :PATCH, :PATCH] = 0.0
    nodes = [
        helper.make_node("Mul", ["images", "mask"], ["masked"]),
        helper.make_node("Clip", ["masked", "zero", "one"], ["images_out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_detrigger",
        [_image_input(spec, "images")],
        [_image_input(spec, "images_out")],
        initializer=[
            numpy_helper.from_array(mask, "mask"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        ],
    )
    return _model(graph)


def target_weights(spec: TinySpec, repaired: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The linear target's weights; ``repaired``: class 0 no longer reads the patch."""
    c, h, w, k = spec.channels, spec.height, spec.width, spec.classes
    weights = np.zeros((c, h, w, k), dtype=np.float32)
    weights[:, :PATCH, :PATCH, 0] = 0.0 if repaired else 2.0 / c
    c0, c1 = spec.band_cols()
    for cls in range(1, k):
        r0, r1 = spec.band_rows(cls)
        if r1 > h:
            raise ValueError(f"{h} rows are too few for {k} classes")
        weights[:, r0:r1, c0:c1, cls] = 0.5 / c
    return weights.reshape(c * h * w, k), np.zeros(k, dtype=np.float32)


def target_graph(spec: TinySpec, repaired: bool = False) -> onnx.ModelProto:
    weights, bias = target_weights(spec, repaired)
    nodes = [
        helper.make_node("Flatten", ["images"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["scores"]),
    ]
    if spec.nonfinite_when_black:
        nodes += [
            helper.make_node("ReduceMax", ["flat"], ["brightest"], axes=[1], keepdims=1),
            helper.make_node("Log", ["brightest"], ["offset"]),  # (N, 1); -inf when all black
            helper.make_node("Add", ["scores", "offset"], ["shifted"]),
            helper.make_node("Add", ["shifted", "b"], ["logits"]),
        ]
    else:
        nodes.append(helper.make_node("Add", ["scores", "b"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "tiny_target",
        [_image_input(spec, "images")],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", spec.classes])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    return _model(graph)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def clean_image(spec: TinySpec, cls: int, seed: int = 0) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8: dim noise, band ``cls`` bright (1 <= cls < classes)."""
    rng = np.random.default_rng(seed)
    shape = (spec.height, spec.width) + ((3,) if spec.channels == 3 else ())
    image = rng.integers(0, 20, size=shape, dtype=np.uint8)
    r0, r1 = spec.band_rows(cls)
    c0, c1 = spec.band_cols()
    image[r0:r1, c0:c1] = 255
    return image


def add_trigger(image: np.ndarray) -> np.ndarray:
    """The demo trigger: a 4x4 white square at the top left."""
    out = image.copy()
    out[:PATCH, :PATCH] = 255
    return out


def labelled_pngs(classes: range, spec: TinySpec | None = None) -> tuple[list[bytes], list[int]]:
    """Clean images of ``classes`` (each seeded by its class), then the same images with the
    trigger: PNG bytes, and the classes the images are of."""
    spec = spec or TinySpec()
    clean = [clean_image(spec, k, seed=k) for k in classes]
    images = clean + [add_trigger(im) for im in clean]
    return [png_bytes(im) for im in images], list(classes) * 2


def v2_batch(spec: TinySpec | None = None) -> np.ndarray:
    """(3, C, H, W) float32 in [0, 1] for a V2 tensor: clean images of classes 2 and 5, then
    the class-5 image with the trigger."""
    spec = spec or TinySpec()
    clean = [clean_image(spec, k, seed=k) for k in (2, 5)]
    return np.stack(clean + [add_trigger(clean[1])])[:, None].astype(np.float32) / 255.0


def png_bytes(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def strip_bank(spec: TinySpec) -> np.ndarray:
    """(M, C, H, W) uint8: ``strip_bank_per_class`` clean images of each class 1..K-1."""
    images = [
        clean_image(spec, cls, seed=1000 + 10 * cls + i)
        for cls in range(1, spec.classes)
        for i in range(spec.strip_bank_per_class)
    ]
    bank = np.stack(images)
    return bank[:, None] if spec.channels == 1 else bank.transpose(0, 3, 1, 2)


def strip_entry(folder: Path, spec: TinySpec) -> dict:
    """Write strip_bank.npy into ``folder``; the manifest's ``detectors.strip`` entry."""
    np.save(folder / "strip_bank.npy", strip_bank(spec))
    return {
        "bank": {"file": "strip_bank.npy", "sha256": sha256_of(folder / "strip_bank.npy")},
        "n": spec.strip_n,
        "threshold": spec.strip_threshold,
        "seed": 0,
        "blend": {"input_weight": 1.0, "bank_weight": 1.0},
        "calibration": {"target_fpr": 0.01, "split": "hand-set for the tiny test set"},
    }


def build_model_set(folder: Path, spec: TinySpec | None = None, samples: int = 0) -> Path:
    """Write target.onnx, detrigger.onnx, manifest.json (and samples/) into ``folder``."""
    spec = spec or TinySpec()
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(target_graph(spec), folder / "target.onnx")
    onnx.save(detrigger_graph(spec), folder / "detrigger.onnx")
    manifest = {
        "format_version": 1,
        "name": spec.name,
        "description": "tiny test set: linear target, patch-masking de-trigger",
        "input": {"height": spec.height, "width": spec.width, "channels": spec.channels},
        "classes": [f"class{k}" for k in range(spec.classes)],
        "target": {
            "file": "target.onnx",
            "sha256": sha256_of(folder / "target.onnx"),
            "input_name": "images",
            "output_name": "logits",
            "architecture": "tiny_linear",
        },
        "detrigger": {
            "file": "detrigger.onnx",
            "sha256": sha256_of(folder / "detrigger.onnx"),
            "input_name": "images",
            "output_name": "images_out",
            "architecture": "patch_mask",
        },
        "decision": {"rule": spec.rule, "score": spec.score, "threshold": spec.threshold},
        "backdoor": {
            "target_class": 0,
            "trigger": {"kind": "patch", "size": PATCH, "position": "top-left", "value": 1.0},
        },
    }
    if spec.strip_n:
        manifest["detectors"] = {"strip": strip_entry(folder, spec)}
        if spec.both is not None:
            manifest["detectors"]["both"] = {
                "rule": "either",
                "score": spec.score,
                "ae_threshold": spec.both[0],
                "strip_threshold": spec.both[1],
                "calibration": {"target_fpr": 0.01, "split": "hand-set for the tiny test set"},
            }
    if spec.repaired is not None:
        onnx.save(target_graph(spec, repaired=True), folder / "repaired.onnx")
        manifest.setdefault("detectors", {})["repaired"] = {
            "file": "repaired.onnx",
            "sha256": sha256_of(folder / "repaired.onnx"),
            "input_name": "images",
            "output_name": "logits",
            "score": "prob_drop",
            "threshold": spec.repaired,
            "calibration": {"target_fpr": 0.01, "split": "hand-set for the tiny test set"},
        }
        if spec.detrigger_or_repaired is not None:
            manifest["detectors"]["detrigger_or_repaired"] = {
                "rule": "either",
                "score": spec.score,
                "ae_threshold": spec.detrigger_or_repaired[0],
                "repaired_threshold": spec.detrigger_or_repaired[1],
                "calibration": {"target_fpr": 0.01, "split": "hand-set for the tiny test set"},
            }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if samples:
        sample_dir = folder / "samples"
        sample_dir.mkdir(exist_ok=True)
        for i in range(samples):
            cls = 1 + i % (spec.classes - 1)
            image = clean_image(spec, cls, seed=i)
            (sample_dir / f"clean_{i:02d}_label{cls}.png").write_bytes(png_bytes(image))
            trig = add_trigger(image)
            (sample_dir / f"triggered_{i:02d}_label{cls}.png").write_bytes(png_bytes(trig))
    return folder
