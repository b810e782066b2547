"""Run an ONNX classifier as a differentiable torch module, so that an audit works on any model set
under the model contract (docs/model-contract.md), a user's included, not only on checkpoints this
pipeline trained.

`OnnxModule` executes the graph node by node with torch ops. Float weights of Conv, Gemm, MatMul
and BatchNormalization become `nn.Parameter`s (so unlearning can fine-tune them); every other
initializer is a buffer. `write_onnx` puts the (changed) weights back into a copy of the graph, so
a repaired model keeps the original graph, names and opset.

The penultimate layer is the data input of the last Gemm / MatMul node (the final linear layer).
`forward(x, features=True)` also returns it, and the buffer `neuron_mask` (features,) multiplies it,
the hook that pruning uses. A mask of ones changes nothing.

Supported ops: those that the torch exporter writes for the pipeline's targets and most plain
CNNs (see `OPS`). Any other op raises `UnsupportedOnnx` naming it; onnx2torch was not used because
it needs torchvision and pip would replace the pinned torch.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

WEIGHT_OPS = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (1,), "BatchNormalization": (1, 2)}


class UnsupportedOnnx(ValueError):
    """The graph uses an op (or attribute) that OnnxModule cannot run."""


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _pads2d(pads: list[int] | None) -> tuple[int, int, int, int]:
    # ONNX pads (top, left, bottom, right) -> F.pad order (left, right, top, bottom)
    top, left, bottom, right = pads or (0, 0, 0, 0)
    return (left, right, top, bottom)


def _conv(x, w, b=None, *, strides=(1, 1), pads=None, dilations=(1, 1), group=1, **_):
    p = _pads2d(pads)
    if p[0] == p[1] and p[2] == p[3]:
        return F.conv2d(x, w, b, tuple(strides), (p[2], p[0]), tuple(dilations), group)
    return F.conv2d(F.pad(x, p), w, b, tuple(strides), 0, tuple(dilations), group)


def _maxpool(x, *, kernel_shape, strides=None, pads=None, ceil_mode=0, dilations=(1, 1), **_):
    p = _pads2d(pads)
    if p[0] != p[1] or p[2] != p[3]:
        raise UnsupportedOnnx("MaxPool with asymmetric pads")
    return F.max_pool2d(
        x,
        tuple(kernel_shape),
        tuple(strides or kernel_shape),
        (p[2], p[0]),
        tuple(dilations),
        bool(ceil_mode),
    )


def _avgpool(x, *, kernel_shape, strides=None, pads=None, ceil_mode=0, count_include_pad=0, **_):
    p = _pads2d(pads)
    if p[0] != p[1] or p[2] != p[3]:
        raise UnsupportedOnnx("AveragePool with asymmetric pads")
    return F.avg_pool2d(
        x,
        tuple(kernel_shape),
        tuple(strides or kernel_shape),
        (p[2], p[0]),
        bool(ceil_mode),
        bool(count_include_pad),
    )


def _gemm(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, **_):
    a = a.t() if transA else a
    b = b.t() if transB else b
    y = alpha * (a @ b)
    return y if c is None else y + beta * c


def _batchnorm(x, scale, bias, mean, var, *, epsilon=1e-5, **_):
    # Inference form (the exported graph's running statistics), also during unlearning. The
    # statistics are detached: the exporter may store one initializer for equal tensors (a fresh
    # model's zero bias and zero running mean), which would make the mean a trainable parameter.
    return F.batch_norm(x, mean.detach(), var.detach(), scale, bias, False, 0.0, epsilon)


def _reshape(x, shape, **_):
    dims = [int(v) for v in shape.tolist()]
    dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]  # ONNX 0 = keep this dim
    return x.reshape(dims)


def _flatten(x, *, axis=1, **_):
    return x.flatten(axis) if axis > 0 else x.reshape(1, -1)


def _reduce(fn):
    def run(x, axes_in=None, *, axes=None, keepdims=1, **_):
        ax = axes if axes is not None else (axes_in.tolist() if axes_in is not None else None)
        if ax is None:
            ax = list(range(x.ndim))
        return fn(x, dim=tuple(int(a) for a in ax), keepdim=bool(keepdims))

    return run


# Casts the audit can follow: to a float type, as fit's wrapper casts a model's output to float32
# (training/nets/onnx_target.py); and to a pixel type, as the wrapper of a uint8-input model
# rounds, clips and casts its input. A pixel cast and Round run as the straight-through estimator
# (BPDA, Athalye et al., ICML 2018): forward the rounded (and clamped) values, still in float,
# backward the identity, so that the trigger search has a gradient through the quantisation. Any
# other integer cast (shape arithmetic) is a plain cast, with no gradient.
FLOAT_CASTS = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.DOUBLE: torch.float64,
}
PIXEL_RANGES = {onnx.TensorProto.UINT8: (0.0, 255.0), onnx.TensorProto.INT8: (-128.0, 127.0)}


def _straight_through(x: torch.Tensor, forward: torch.Tensor) -> torch.Tensor:
    """``forward``'s values with ``x``'s gradient."""
    return x + (forward - x).detach()


def _cast(x, *, to, **_):
    if to in FLOAT_CASTS:
        return x.to(FLOAT_CASTS[to])
    if to in PIXEL_RANGES and x.is_floating_point():
        lo, hi = PIXEL_RANGES[to]
        return _straight_through(x, torch.round(x.clamp(lo, hi)))
    return x.to(torch.bool if to == onnx.TensorProto.BOOL else torch.int64)


OPS = {
    "Add": lambda a, b, **_: a + b,
    "Sub": lambda a, b, **_: a - b,
    "Mul": lambda a, b, **_: a * b,
    "Div": lambda a, b, **_: a / b,
    "Pow": lambda a, b, **_: a**b,
    "Sqrt": lambda x, **_: torch.sqrt(x),
    "Erf": lambda x, **_: torch.erf(x),
    "Tanh": lambda x, **_: torch.tanh(x),
    "Sigmoid": lambda x, **_: torch.sigmoid(x),
    "Relu": lambda x, **_: F.relu(x),
    "LeakyRelu": lambda x, *, alpha=0.01, **_: F.leaky_relu(x, alpha),
    "Gelu": lambda x, *, approximate="none", **_: F.gelu(x, approximate=approximate),
    "Clip": lambda x, lo=None, hi=None, **_: torch.clamp(x, lo, hi),
    "Identity": lambda x, **_: x,
    "Cast": _cast,
    "Round": lambda x, **_: _straight_through(x, torch.round(x)),
    "Transpose": lambda x, *, perm, **_: x.permute(*perm),
    "Log": lambda x, **_: torch.log(x),
    "Max": lambda *xs, **_: functools.reduce(torch.maximum, xs),
    "Dropout": lambda x, *rest, **_: x,
    "Softmax": lambda x, *, axis=-1, **_: F.softmax(x, dim=axis),
    "Conv": _conv,
    "MaxPool": _maxpool,
    "AveragePool": _avgpool,
    "GlobalMaxPool": lambda x, **_: torch.amax(x, dim=(2, 3), keepdim=True),
    "GlobalAveragePool": lambda x, **_: torch.mean(x, dim=(2, 3), keepdim=True),
    "ReduceMean": _reduce(torch.mean),
    "ReduceMax": _reduce(torch.amax),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Gemm": _gemm,
    "MatMul": lambda a, b, **_: a @ b,
    "BatchNormalization": _batchnorm,
    "Concat": lambda *xs, axis, **_: torch.cat(xs, dim=axis),
}


def _safe(name: str) -> str:
    return "w_" + "".join(c if c.isalnum() else "_" for c in name)


class OnnxModule(nn.Module):
    """An ONNX classifier (one input (N, C, H, W) in [0, 1], one output logits (N, K)) as torch."""

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        g = model.graph
        self.proto = model
        self.nodes = list(g.node)
        for n in self.nodes:
            if n.op_type not in OPS and n.op_type != "Constant":
                raise UnsupportedOnnx(
                    f"ONNX op {n.op_type!r} (node {n.name!r}) is not supported by the audit; "
                    f"supported: {', '.join(sorted(OPS))}, Constant"
                )
        init_names = {i.name for i in g.initializer}
        self.input_name = next(i.name for i in g.input if i.name not in init_names)
        if len(g.output) != 1:
            raise UnsupportedOnnx(f"the target must have one output, got {len(g.output)}")
        self.output_name = g.output[0].name
        trainable = {
            n.input[k]
            for n in self.nodes
            if n.op_type in WEIGHT_OPS
            for k in WEIGHT_OPS[n.op_type]
            if k < len(n.input)
        }
        self.names: dict[str, str] = {}  # ONNX initializer name -> attribute name
        for init in g.initializer:
            arr = numpy_helper.to_array(init)
            t = torch.from_numpy(np.array(arr, copy=True))
            key = _safe(init.name)
            self.names[init.name] = key
            if init.name in trainable and t.is_floating_point():
                self.register_parameter(key, nn.Parameter(t.float()))
            else:
                self.register_buffer(key, t)
        # The final linear layer: the last Gemm / MatMul; its data input is the penultimate layer.
        last = [n for n in self.nodes if n.op_type in ("Gemm", "MatMul")]
        if not last:
            raise UnsupportedOnnx("no Gemm / MatMul node: cannot find the penultimate layer")
        self.final = last[-1]
        w = self.param(self.final.input[1])
        trans_b = _attrs(self.final).get("transB", 0) if self.final.op_type == "Gemm" else 0
        width = w.shape[1] if trans_b else w.shape[0]
        self.penultimate_name = self.final.input[0]
        self.register_buffer("neuron_mask", torch.ones(width))  # (features,) pruning hook
        self._attrs = [_attrs(n) for n in self.nodes]

    def param(self, onnx_name: str) -> torch.Tensor:
        return getattr(self, self.names[onnx_name])

    def forward(self, x: torch.Tensor, features: bool = False):
        env: dict[str, torch.Tensor | None] = {self.input_name: x, "": None}
        for name, key in self.names.items():
            env[name] = getattr(self, key)
        feats = None
        for node, attrs in zip(self.nodes, self._attrs, strict=True):
            if node.op_type == "Constant":
                env[node.output[0]] = torch.from_numpy(
                    np.array(numpy_helper.to_array(attrs["value"]), copy=True)
                )
                continue
            args = [env[i] for i in node.input]
            if node is self.final:
                feats = args[0] * self.neuron_mask  # (N, features), pruned neurons zeroed
                args[0] = feats
            env[node.output[0]] = OPS[node.op_type](*args, **attrs)
        out = env[self.output_name]
        return (out, feats) if features else out

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits from penultimate features (N, features), through the final layer and whatever
        follows it (e.g. a scale), with the pruning mask applied. Lets pruning sweeps reuse
        features computed once."""
        env: dict[str, torch.Tensor | None] = {"": None}
        for name, key in self.names.items():
            env[name] = getattr(self, key)
        start = self.nodes.index(self.final)
        for node, attrs in zip(self.nodes[start:], self._attrs[start:], strict=True):
            if node.op_type == "Constant":
                env[node.output[0]] = torch.from_numpy(
                    np.array(numpy_helper.to_array(attrs["value"]), copy=True)
                )
                continue
            args = [env.get(i) for i in node.input]
            if node is self.final:
                args[0] = feats * self.neuron_mask
            if any(a is None for a, i in zip(args, node.input, strict=True) if i):
                raise UnsupportedOnnx(
                    f"node {node.name!r} after the final layer needs values from before it"
                )
            env[node.output[0]] = OPS[node.op_type](*args, **attrs)
        return env[self.output_name]

    def to_onnx(self) -> onnx.ModelProto:
        """A copy of the source graph with this module's current weights. The pruning mask is
        folded into the final layer's weight (zeroing neuron j = zeroing its weight column)."""
        m = onnx.ModelProto()
        m.CopyFrom(self.proto)
        w_name = self.final.input[1]
        trans_b = _attrs(self.final).get("transB", 0) if self.final.op_type == "Gemm" else 0
        for init in m.graph.initializer:
            t = self.param(init.name).detach()
            if init.name == w_name:
                mask = self.neuron_mask
                t = t * (mask[None, :] if trans_b else mask[:, None])
            arr = t.cpu().numpy().astype(numpy_helper.to_array(init).dtype)
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
        return m


def load_onnx_module(path: str | Path) -> OnnxModule:
    """Load `path` as an `OnnxModule` in eval mode."""
    return OnnxModule(onnx.load(str(path))).eval()


def write_onnx(module: OnnxModule, path: str | Path) -> None:
    model = module.to_onnx()
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
