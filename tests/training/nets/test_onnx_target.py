"""A user's ONNX classifier, wrapped so that the set's target.onnx takes the contract's float32
NCHW in [0, 1] with a dynamic batch: the wrapped graph must give what the user's graph gives on
the same images, or the wrap must be refused naming the option that fixes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.support import user_models as um
from training.nets.onnx_target import (
    INPUT_NAME,
    OUTPUT_NAME,
    TargetError,
    TargetOptions,
    inspect_target,
    wrap_target,
)

CHW = (3, 40, 48)


@pytest.fixture(scope="module")
def net() -> um.Net:
    torch.manual_seed(0)
    return um.Net(CHW).eval()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return um.make_images(5, CHW, 1)[0]  # (5, 3, 40, 48) float32 in [0, 1]


def run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def logits(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def test_a_plain_graph_is_wrapped_to_the_same_logits(tmp_path, net, images) -> None:
    src = um.export(net, torch.from_numpy(images[:2]), tmp_path / "m.onnx", input_name="images")
    info = wrap_target(src, TargetOptions(), tmp_path / "t.onnx", images)
    assert (info.layout, info.chw, info.classes, info.output_kind) == ("NCHW", CHW, 8, "logits")
    sess = ort.InferenceSession(str(tmp_path / "t.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == [INPUT_NAME]
    assert [o.name for o in sess.get_outputs()] == [OUTPUT_NAME]
    np.testing.assert_allclose(run(tmp_path / "t.onnx", images), logits(net, images), atol=1e-4)


def test_an_nhwc_uint8_graph_is_wrapped_with_layout_and_scale_read_from_it(
    tmp_path, net, images
) -> None:
    example = torch.zeros(2, 40, 48, 3, dtype=torch.uint8)
    src = um.export(um.NhwcUint8(net), example, tmp_path / "m.onnx")
    info = wrap_target(src, TargetOptions(), tmp_path / "t.onnx", images)
    assert (info.layout, info.dtype, info.scale) == ("NHWC", "uint8", 255.0)
    # The user's graph on the uint8 NHWC form of the same images.
    u8 = np.rint(images * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(run(tmp_path / "t.onnx", images), run(src, u8), atol=1e-4)


def test_normalised_input_needs_mean_and_std(tmp_path, net, images) -> None:
    mean, std = 0.5, 0.25
    src = um.export(um.Expects(net, mean, std), torch.zeros(2, *CHW), tmp_path / "m.onnx")
    opts = TargetOptions(mean=(mean,), std=(std,))
    wrap_target(src, opts, tmp_path / "t.onnx", images)
    np.testing.assert_allclose(run(tmp_path / "t.onnx", images), logits(net, images), atol=1e-4)
    # Without the options the graph is run on [0, 1] as given: other logits.
    wrap_target(src, TargetOptions(), tmp_path / "plain.onnx", images)
    assert not np.allclose(run(tmp_path / "plain.onnx", images), logits(net, images), atol=1e-2)


def test_probabilities_are_detected_and_turned_into_log_probabilities(
    tmp_path, net, images
) -> None:
    src = um.export(um.Probabilities(net), torch.zeros(2, *CHW), tmp_path / "m.onnx")
    info = wrap_target(src, TargetOptions(), tmp_path / "t.onnx", images)
    assert info.output_kind == "probabilities"
    got = run(tmp_path / "t.onnx", images)
    want = torch.log_softmax(torch.from_numpy(logits(net, images)), 1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_a_fixed_batch_graph_serves_any_batch(tmp_path, net, images) -> None:
    src = um.export(net, torch.zeros(1, *CHW), tmp_path / "m.onnx", dynamic=False)
    assert inspect_target(src, TargetOptions()).batch == 1
    info = wrap_target(src, TargetOptions(), tmp_path / "t.onnx", images)
    assert "fixed batch 1 made dynamic" in info.notes
    np.testing.assert_allclose(run(tmp_path / "t.onnx", images), logits(net, images), atol=1e-4)


def test_a_batch_written_into_the_graph_is_refused_clearly(tmp_path, net, images) -> None:
    src = um.export(um.ConstantBatch(net), torch.zeros(1, *CHW), tmp_path / "m.onnx", dynamic=False)
    with pytest.raises(TargetError, match="batch axis cannot be made dynamic"):
        wrap_target(src, TargetOptions(), tmp_path / "t.onnx", images)


def test_two_outputs_need_output(tmp_path, net, images) -> None:
    src = um.export(
        um.TwoOutputs(net), torch.zeros(2, *CHW), tmp_path / "m.onnx", ("features", "logits")
    )
    with pytest.raises(TargetError, match="--output NAME"):
        wrap_target(src, TargetOptions(), tmp_path / "t.onnx", images)
    wrap_target(src, TargetOptions(output="logits"), tmp_path / "t.onnx", images)
    np.testing.assert_allclose(run(tmp_path / "t.onnx", images), logits(net, images), atol=1e-4)
    with pytest.raises(TargetError, match="--output 'nope'"):
        wrap_target(src, TargetOptions(output="nope"), tmp_path / "t.onnx", images)


def test_bad_options_are_refused_naming_the_option(tmp_path, net, images) -> None:
    src = um.export(net, torch.zeros(2, *CHW), tmp_path / "m.onnx")
    with pytest.raises(TargetError, match="--mean gives 2 values"):
        inspect_target(src, TargetOptions(mean=(0.1, 0.2)))
    with pytest.raises(TargetError, match="--std"):
        inspect_target(src, TargetOptions(std=(0.0,)))
    with pytest.raises(TargetError, match="48 channels.*--layout NCHW"):
        inspect_target(src, TargetOptions(layout="NHWC"))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(TargetError, match="not a readable ONNX model"):
        inspect_target(tmp_path / "junk.onnx", TargetOptions())


@pytest.mark.parametrize("kind", ["normalised", "probabilities", "uint8"])
def test_the_audit_runs_a_wrapped_graph_as_onnx_runtime_does(tmp_path, net, images, kind) -> None:
    """A set made by fit keeps the wrapper (Sub/Div, Cast, Max/Log; for a uint8-input model
    Round, Clip and a Cast to uint8, run with the straight-through estimator) in its
    target.onnx: the audit's torch interpreter must give the same outputs, with a gradient to
    the image."""
    from training.nets.onnx_torch import load_onnx_module

    opts = TargetOptions()
    if kind == "normalised":
        src = um.export(um.Expects(net, 0.5, 0.25), torch.zeros(2, *CHW), tmp_path / "m.onnx")
        opts = TargetOptions(mean=(0.5,), std=(0.25,))
    elif kind == "probabilities":
        src = um.export(um.Probabilities(net), torch.zeros(2, *CHW), tmp_path / "m.onnx")
    else:
        example = torch.zeros(2, 40, 48, 3, dtype=torch.uint8)
        src = um.export(um.NhwcUint8(net), example, tmp_path / "m.onnx")
    wrap_target(src, opts, tmp_path / "t.onnx", images)
    module = load_onnx_module(tmp_path / "t.onnx")
    x = torch.from_numpy(images).requires_grad_(True)
    y = module(x)
    np.testing.assert_allclose(y.detach().numpy(), run(tmp_path / "t.onnx", images), atol=1e-4)
    y[:, 0].sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
