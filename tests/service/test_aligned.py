"""Convolutions over an unaligned concatenation split at load time (service/runtime/aligned.py):
the same function within float rounding, only where the split applies, kept as written
otherwise, and applied to the shipped sets' AEs without losing the joined graph."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.runtime import aligned
from service.runtime.aligned import align, aligned_model
from service.runtime.modelset import ModelSet
from service.runtime.onnx import OnnxModel
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
H = W = 12


def skip_graph(order: str = "features-first", out_channels: int = 4, group: int = 1) -> bytes:
    """x (N, 1, H, W) -> conv to 16 channels -> concat with x (17 channels, `order`) -> conv
    (`group` groups) -> out: the AE's last decoder layer in small."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(16, 1, 3, 3)).astype(np.float32)
    w2 = rng.normal(size=(out_channels, 17 // group, 3, 3)).astype(np.float32)
    b2 = rng.normal(size=(out_channels,)).astype(np.float32)
    parts = ["f", "x"] if order == "features-first" else ["x", "f"]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["f"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Concat", parts, ["cat"], name="cat", axis=1),
        helper.make_node(
            "Conv", ["cat", "w2", "b2"], ["out"], name="conv2", pads=[1, 1, 1, 1], group=group
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "skip",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, H, W])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", out_channels, H, W])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (b2, "b2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def load(data: bytes, settings: Settings | None = None) -> OnnxModel:
    return OnnxModel.load("skip.onnx", data, "x", "out", settings or Settings())


def probe(n: int = 3) -> np.ndarray:
    return np.random.default_rng(1).random((n, 1, H, W), dtype=np.float32)


@pytest.mark.parametrize("order", ["features-first", "image-first"])
def test_the_split_graph_computes_what_the_written_one_does(order: str) -> None:
    data = skip_graph(order)
    model = onnx.load_from_string(data)
    # an initializer no node of the graph reads (a subgraph might): not the rewrite's to drop
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(2, np.float32), "spare"))
    assert align(model) == ["conv2"]
    assert "spare" in {t.name for t in model.graph.initializer}
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Conv", "Conv", "Conv", "Add"]  # the 17-channel concatenation is gone
    kernels = {
        t.name: tuple(t.dims) for t in model.graph.initializer if t.name.startswith("aligned/")
    }
    assert sorted(kernels.values()) == [(4, 1, 3, 3), (4, 16, 3, 3)]
    assert "w2" not in {t.name for t in model.graph.initializer}  # the whole kernel dropped
    x = probe()
    got = load(model.SerializeToString()).run(x)
    want = load(data).run(x)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= aligned.TOLERANCE * np.abs(want).max()  # float rounding


@pytest.mark.parametrize(
    "graph",
    [
        pytest.param(lambda: skip_graph(group=17, out_channels=17), id="grouped"),
        pytest.param(lambda: aligned_input_graph(), id="already-aligned"),
        pytest.param(lambda: shared_concat_graph(), id="concat-read-twice"),
    ],
)
def test_convolutions_the_split_does_not_fit_are_left(graph) -> None:  # noqa: ANN001
    model = onnx.load_from_string(graph())
    before = model.SerializeToString()
    assert align(model) == []
    assert model.SerializeToString() == before


def aligned_input_graph() -> bytes:
    """conv2 over 16 channels only: nothing to split."""
    model = onnx.load_from_string(skip_graph())
    cat = next(n for n in model.graph.node if n.op_type == "Concat")
    del cat.input[1]
    conv2 = next(n for n in model.graph.node if n.name == "conv2")
    w2 = next(t for t in model.graph.initializer if t.name == "w2")
    w2.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w2)[:, :16].copy(), "w2"))
    assert conv2.input[1] == "w2"
    return model.SerializeToString()


def shared_concat_graph() -> bytes:
    """The concatenation is also a graph output: removing it would change the graph."""
    model = onnx.load_from_string(skip_graph())
    model.graph.output.append(
        helper.make_tensor_value_info("cat", TensorProto.FLOAT, ["batch", 17, H, W])
    )
    return model.SerializeToString()


def test_aligned_model_swaps_in_the_split_graph_on_the_cpu_with_full_optimisation() -> None:
    data = skip_graph()
    model = load(data)
    new, new_data = aligned_model(model, data, Settings(), probe())
    assert new is not model and new_data != data
    assert [n.op_type for n in onnx.load_from_string(new_data).graph.node][-1] == "Add"


def test_aligned_model_keeps_the_graph_where_it_cannot_help_or_differs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data = skip_graph()
    basic = Settings(graph_optimization="basic")  # no NCHWc layout: the split buys nothing
    model = load(data, basic)
    assert aligned_model(model, data, basic, probe()) == (model, data)
    # an output farther from the written graph's than the tolerance: kept, with the reason
    monkeypatch.setattr(aligned, "TOLERANCE", -1.0)
    model = load(data)
    with caplog.at_level(logging.WARNING, "guard.runtime"):
        assert aligned_model(model, data, Settings(), probe()) == (model, data)
    assert any("graph kept as written" in r.getMessage() for r in caplog.records)
    assert any("differ" in str(getattr(r, "why", "")) for r in caplog.records)
    # bytes onnx cannot read are no business of the rewrite: kept, the loader had its say
    assert aligned_model(model, b"not a graph", Settings(), probe()) == (model, b"not a graph")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_the_shipped_aes_are_split_and_keep_the_joined_graph(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Each shipped AE's skip convolution reads 2 x 16 + C channels: split at load; the joined
    graph (service/runtime/fused.py) is still built and gives the two calls' outputs bit for bit
    (its parity check runs on the aligned AE)."""
    folder = ROOT / "models" / name
    with caplog.at_level(logging.INFO, "guard.runtime"):
        ms = ModelSet.load(folder, Settings(models=[folder]))
    done = [
        r for r in caplog.records if r.getMessage() == "convolutions aligned for the CPU kernels"
    ]
    assert len(done) == 1 and done[0].convolutions == ["/ae/dec1/dec1.0/Conv"]
    assert done[0].max_abs_diff <= aligned.TOLERANCE
    assert ms.fused is not None
