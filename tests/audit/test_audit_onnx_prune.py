"""The ONNX -> torch module and the pruning hook on a tiny exported classifier."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from training.inversion.prune import prune_curve, rank_neurons
from training.nets.onnx_torch import OnnxModule, UnsupportedOnnx, load_onnx_module, write_onnx


def _ort(path, x: torch.Tensor):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def test_onnx_module_matches_torch_and_onnxruntime(tiny_backdoored) -> None:
    net, path = tiny_backdoored
    m = load_onnx_module(path)
    x = torch.rand(5, 1, 15, 15)
    with torch.no_grad():
        logits, feats = m(x, features=True)
        want = net(x)
    assert torch.allclose(logits, want, atol=1e-5)
    assert torch.allclose(logits, _ort(path, x), atol=1e-4)
    assert feats.shape == (5, 32)  # the input of the last Linear
    assert torch.allclose(m.head(feats), logits, atol=1e-6)
    # gradients reach the input: what trigger synthesis needs
    xg = x.clone().requires_grad_(True)
    m(xg).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_pruning_hook_zeroes_neurons_and_exports(tiny_backdoored, tmp_path) -> None:
    net, path = tiny_backdoored
    m = load_onnx_module(path)
    x = torch.rand(6, 1, 15, 15)
    pruned = [0, 5, 7]
    m.neuron_mask[pruned] = 0.0
    # reference: zero the same columns of the last Linear's weight in the torch net
    last: nn.Linear = net[-1]
    with torch.no_grad():
        saved = last.weight.clone()
        last.weight[:, pruned] = 0.0
        want = net(x)
        last.weight.copy_(saved)
        got, feats = m(x, features=True)
    assert torch.allclose(got, want, atol=1e-5)
    assert (feats[:, pruned] == 0).all()
    out = tmp_path / "pruned.onnx"
    write_onnx(m, out)  # the mask is folded into the weight
    assert torch.allclose(_ort(out, x), want, atol=1e-4)
    assert not torch.allclose(_ort(path, x), want, atol=1e-4)  # the source graph is unchanged


def test_prune_curve_stops_at_level(tiny_backdoored) -> None:
    _, path = tiny_backdoored
    m = load_onnx_module(path)
    x = torch.rand(40, 1, 15, 15)
    y = torch.zeros(40, dtype=torch.long)
    gap = torch.arange(32, dtype=torch.float32)  # neuron 31 first
    order = rank_neurons(gap)
    assert order[:3].tolist() == [31, 30, 29]
    curve, n = prune_curve(
        m, x, y, {"synthesised": (x, 0)}, order, stop_asr=-1.0, step=4, max_share=0.5
    )
    assert [r["pruned"] for r in curve] == [0, 4, 8, 12, 16]
    assert n == 16 and m.neuron_mask.sum() == 16 and m.neuron_mask[31] == 0
    # success of "class 0" equals accuracy here, since y is all 0
    assert all(r["asr_synthesised"] == r["accuracy"] for r in curve)


def test_unsupported_op_is_named(tmp_path) -> None:
    node = onnx.helper.make_node("LpNormalization", ["images"], ["logits"])
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 4])],
    )
    with pytest.raises(UnsupportedOnnx, match="LpNormalization"):
        OnnxModule(onnx.helper.make_model(graph))


def test_prune_curve_extends_past_stop_but_keeps_stop_point(tiny_backdoored) -> None:
    _, path = tiny_backdoored
    m = load_onnx_module(path)
    x = torch.rand(10, 1, 15, 15)
    y = torch.zeros(10, dtype=torch.long)
    order = rank_neurons(torch.arange(32, dtype=torch.float32))
    # stop_asr 2.0: the stop is met before any pruning; the curve still goes to 25% = 8 neurons
    curve, n = prune_curve(
        m, x, y, {"synthesised": (x, 0)}, order, stop_asr=2.0, step=4, extend_share=0.25
    )
    assert n == 0 and [r["pruned"] for r in curve] == [0, 4, 8]
    assert m.neuron_mask.sum() == 32  # left at the stop point, not at the curve's end


def test_batchnorm_graph_fine_tunes_with_running_statistics_fixed(tmp_path) -> None:
    # A fresh BatchNorm has zero bias and zero running mean; the exporter may store them as one
    # initializer. Fine-tuning (unlearning) must still work and leave the statistics alone. The
    # pool keeps the exporter from folding the BatchNorm into the Conv (as in ResNetSmall).
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.MaxPool2d(2),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 3),
    ).eval()
    path = tmp_path / "bn.onnx"
    x = torch.rand(6, 1, 7, 7)
    torch.onnx.export(net, (x,), str(path), dynamo=False, input_names=["images"])
    m = load_onnx_module(path)
    assert any(n.op_type == "BatchNormalization" for n in m.nodes)
    with torch.no_grad():
        assert torch.allclose(m(x), net(x), atol=1e-5)
    m.train()
    for p in m.parameters():
        p.requires_grad_(True)
    m(x).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
