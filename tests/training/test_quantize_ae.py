"""The int8 quantisation of a de-trigger AE (training/quantize_ae.py) on the tiny preset's data:
a QDQ graph that ONNX Runtime runs with int8 convolutions, close to the float AE, with its
source, settings and calibration recorded beside it."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from training import quantize_ae
from training.nets.autoencoders import build_autoencoder
from training.nets.export import export_and_check
from training.nets.manifest_file import sha256


@pytest.mark.parametrize("ops", ["all", "conv"])
def test_quantised_ae_runs_int8_convolutions_close_to_the_float_one(tiny_preset, tmp_path, ops):
    torch.manual_seed(0)
    ae = build_autoencoder("conv", 1, 28, width=4, fill="extended", residual=0.35).eval()
    src = tmp_path / "ae.onnx"
    export_and_check(ae, torch.rand(4, 1, 28, 28), src, "images", "images_out")
    src.with_suffix(".json").write_text(json.dumps({"autoencoder": {"arch": "conv", "width": 4}}))
    out = tmp_path / "int8" / "ae_int8.onnx"
    info = quantize_ae.main(
        ["--dataset", "mnist", "--data-dir", tiny_preset.data_dir, "--ae", str(src)]
        + ["--out", str(out), "--ops", ops, "--calibration-images", "64"]
    )
    assert out.is_file() and info["detrigger"]["sha256"] == sha256(out)
    q = info["quantisation"]
    assert q["ops"] == ops and q["calibration"]["images"] == 64
    assert q["calibration"]["from"] == "training split"
    assert q["operators"]["onnx_runtime_optimised"].get("QLinearConv", 0) > 0
    assert "QuantizeLinear" in q["operators"]["quantised"]
    assert q["difference_from_float_on_validation"]["max_abs"] < 0.25
    assert info["autoencoder"] == {"arch": "conv", "width": 4}
    assert json.loads(out.with_suffix(".json").read_text()) == info
    # the contract's interface is kept: one float input, one float output of the same shape
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["images"]
    assert [o.name for o in sess.get_outputs()] == ["images_out"]
    (y,) = sess.run(None, {"images": np.random.rand(3, 1, 28, 28).astype(np.float32)})
    assert y.shape == (3, 1, 28, 28) and y.dtype == np.float32


def test_a_missing_source_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        quantize_ae.main(["--ae", str(tmp_path / "none.onnx"), "--out", str(tmp_path / "o.onnx")])
