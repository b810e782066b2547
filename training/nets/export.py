"""ONNX export of a model set (docs/model-contract.md): target.onnx, detrigger.onnx, manifest.json
and samples/.

Both graphs take float32 NCHW images in [0, 1] with a dynamic batch axis (opset 17, the legacy
TorchScript exporter). After writing, each graph is run with ONNX Runtime on a batch and compared
with torch; the export fails if the target's logits (or the AE's pixels) differ by more than
`tol` (1e-4).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.nets.manifest_file import sha256

OPSET = 17
TOL = 1e-4


class ParityError(RuntimeError):
    """ONNX Runtime and torch disagree by more than the tolerance."""


def export_onnx(
    model: nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str
) -> None:
    """Write `model` (eval mode) to `path` with a dynamic batch axis."""
    model = model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but still the simplest path to a plain opset-17
        # graph with one dynamic axis; the parity check below guards its output.
        warnings.simplefilter("ignore", DeprecationWarning)
        # Python ints taken from shapes (the conv AE's padding) become constants: fine, since the
        # image size is fixed per model set and only the batch axis is dynamic.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
        )


def check_parity(model: nn.Module, path: Path, batch: torch.Tensor, tol: float = TOL) -> float:
    """max |onnxruntime(batch) - torch(batch)|; raises ParityError above tol."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: batch.numpy().astype(np.float32)})
    with torch.no_grad():
        want = model.eval()(batch).numpy()
    if got.shape != want.shape:
        raise ParityError(f"{path}: ONNX output shape {got.shape} != torch {want.shape}")
    diff = float(np.abs(got - want).max())
    if not diff <= tol:  # also catches NaN
        raise ParityError(f"{path}: max |ONNX Runtime - torch| = {diff:.3g} > {tol:g}")
    return diff


def export_and_check(
    model: nn.Module,
    batch: torch.Tensor,
    path: Path,
    input_name: str,
    output_name: str,
    tol: float = TOL,
) -> dict:
    """Export, check parity on `batch` (and on a batch of another size, for the dynamic axis),
    and return the manifest entry."""
    export_onnx(model, batch[:2], path, input_name, output_name)
    diff = max(check_parity(model, path, batch, tol), check_parity(model, path, batch[:3], tol))
    return {
        "file": path.name,
        "sha256": sha256(path),
        "input_name": input_name,
        "output_name": output_name,
        "parity_max_abs_diff": diff,
        "size_bytes": path.stat().st_size,
    }


def onnx_logits_pair(
    target_path: Path, ae_path: Path, images: np.ndarray, batch_size: int = 500
) -> tuple[np.ndarray, np.ndarray]:
    """(f(x), f(AE(x))) computed the way the service does, with ONNX Runtime on the exported
    graphs. images: float32 (N, C, H, W) in [0, 1]."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    target = ort.InferenceSession(str(target_path), opts, providers=["CPUExecutionProvider"])
    ae = ort.InferenceSession(str(ae_path), opts, providers=["CPUExecutionProvider"])
    lx, lae = [], []
    for i in range(0, len(images), batch_size):
        x = np.ascontiguousarray(images[i : i + batch_size], np.float32)
        (cleaned,) = ae.run(None, {ae.get_inputs()[0].name: x})
        lx.append(target.run(None, {target.get_inputs()[0].name: x})[0])
        lae.append(target.run(None, {target.get_inputs()[0].name: cleaned})[0])
    return np.concatenate(lx).astype(np.float64), np.concatenate(lae).astype(np.float64)


def save_png(image: np.ndarray, path: Path) -> None:
    """Write one float image (C, H, W) in [0, 1] as an 8-bit PNG (grayscale or RGB)."""
    from PIL import Image

    a = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    Image.fromarray(a).save(path)


def write_samples(
    folder: Path, clean: np.ndarray, triggered: np.ndarray, labels: np.ndarray
) -> list[str]:
    """samples/clean_03_label7.png and samples/triggered_03_label7.png pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, (c, t, y) in enumerate(zip(clean, triggered, labels, strict=True)):
        for kind, img in (("clean", c), ("triggered", t)):
            name = f"{kind}_{i:02d}_label{int(y)}.png"
            save_png(img, folder / name)
            names.append(name)
    return names
