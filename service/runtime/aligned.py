"""Convolutions over an unaligned concatenation, split so that ONNX Runtime's blocked CPU
kernels run them (issue 20: the AE's cost).

With every graph optimisation on, ONNX Runtime's CPU provider runs a convolution in its NCHWc
layout (channels in blocks of 8 or 16) only when the convolution's input channels fill whole
blocks, or are fewer than one block (a first layer). The de-trigger AE's last decoder
convolution reads the skip concatenation ``[up(w), enc(w), x(C)]``: 2w + C channels (33 for a
grey image at width 16), so it runs in the plain NCHW kernel, about twice the cost per
multiply-add of its neighbours, and the tensors around it are reordered in and out of NCHWc.

A convolution is linear in its input channels, so over a concatenation ``[a; b]``

    conv(concat(a, b), W, bias) == conv(a, W[:, :Ca], bias) + conv(b, W[:, Ca:])

:func:`align` rewrites each such convolution (no groups, weights stored in the graph, the
concatenation read by nothing else) into the two convolutions and an Add, with ``a`` the part
of the concatenation whose channels are a multiple of :data:`MULTIPLE`. ONNX Runtime then runs
``conv(a)`` blocked, fuses the Add into it, and runs ``conv(b)`` (C channels) with its
first-layer kernel. No multiply-add is added; the result differs from the written graph by
float rounding only (the sums are taken in another order), which :func:`aligned_model` bounds
on a probe before the service uses it.

Done at load time from the verified bytes, like the joined graph (service/runtime/fused.py):
nothing is written, so the manifest's hashes keep naming the file the rewrite started from.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from service.runtime.onnx import OnnxModel
from service.settings import Settings

logger = logging.getLogger("guard.runtime")

MULTIPLE = 8  # ONNX Runtime's NCHWc block on AVX2; 32 channels also fill AVX-512's 16
PREFIX = "aligned/"  # names of the tensors and nodes the rewrite adds
TOLERANCE = 1e-5  # largest |aligned - written| on the probe, relative to max(1, max |written|)


def _channels(model: onnx.ModelProto) -> dict[str, int]:
    """Each tensor's static channel count (axis 1), where shape inference gives one."""
    inferred = shape_inference.infer_shapes(model)
    g = inferred.graph
    out = {}
    for info in (*g.input, *g.value_info, *g.output):
        dims = info.type.tensor_type.shape.dim
        if len(dims) >= 2 and dims[1].HasField("dim_value"):
            out[info.name] = dims[1].dim_value
    return out


def _group(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def _concat_axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def _joined(names: list[str], output: str, nodes: list[onnx.NodeProto]) -> str:
    """One tensor of ``names`` along the channels: itself, or a new Concat appended."""
    if len(names) == 1:
        return names[0]
    nodes.append(helper.make_node("Concat", names, [output], name=output, axis=1))
    return output


def align(model: onnx.ModelProto) -> list[str]:
    """Rewrite ``model`` in place (see the module's docstring); the names of the convolutions
    split, empty when nothing was."""
    graph = model.graph
    channels = _channels(model)
    weights = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers = Counter(i for n in graph.node for i in n.input)
    readers.update(o.name for o in graph.output)
    replaced: dict[str, list[onnx.NodeProto]] = {}  # conv output -> the nodes in its place
    dropped: set[str] = set()  # outputs of the concatenations that the splits replace
    whole: set[str] = set()  # the split convolutions' weights
    for node in graph.node:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or _group(node) != 1:
            continue
        if len(node.input) < 2 or node.input[1] not in weights:
            continue
        concat = producer.get(node.input[0])
        if concat is None or concat.op_type != "Concat" or readers[node.input[0]] != 1:
            continue
        parts = list(concat.input)
        if _concat_axis(concat) not in (1, -3) or any(p not in channels for p in parts):
            continue
        sizes = [channels[p] for p in parts]
        total = sum(sizes)
        if total % MULTIPLE == 0:
            continue
        w = numpy_helper.to_array(weights[node.input[1]])
        if w.ndim != 4 or w.shape[1] != total:
            continue
        k = _prefix_or_suffix(sizes)
        if k == 0:
            continue
        if k > 0:  # the first k inputs fill whole blocks
            aligned, rest = parts[:k], parts[k:]
            cut = sum(sizes[:k])
            w_a, w_b = w[:, :cut], w[:, cut:]
        else:  # the last -k do
            aligned, rest = parts[k:], parts[:k]
            cut = total - sum(sizes[k:])
            w_a, w_b = w[:, cut:], w[:, :cut]
        out = node.output[0]
        base = PREFIX + out
        new: list[onnx.NodeProto] = []
        a = _joined(aligned, base + "/a", new)
        b = _joined(rest, base + "/b", new)
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.ascontiguousarray(w_a), base + "/w_a"),
                numpy_helper.from_array(np.ascontiguousarray(w_b), base + "/w_b"),
            ]
        )
        attrs = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        bias = list(node.input[2:3])
        new += [
            helper.make_node(
                "Conv", [a, base + "/w_a", *bias], [base + "/y_a"], name=base + "/conv_a", **attrs
            ),
            helper.make_node(
                "Conv", [b, base + "/w_b"], [base + "/y_b"], name=base + "/conv_b", **attrs
            ),
            helper.make_node("Add", [base + "/y_a", base + "/y_b"], [out], name=base + "/add"),
        ]
        replaced[out] = new
        dropped.add(node.input[0])
        whole.add(node.input[1])
    if not replaced:
        return []
    nodes: list[onnx.NodeProto] = []
    split = []
    for node in graph.node:
        if node.op_type == "Conv" and node.output[0] in replaced:
            nodes.extend(replaced[node.output[0]])
            split.append(node.name or node.output[0])
        elif not (node.op_type == "Concat" and node.output[0] in dropped):
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            nodes.append(copy)
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unread(graph, whole)
    onnx.checker.check_model(model)
    return split


def _prefix_or_suffix(sizes: list[int]) -> int:
    """k > 0: the first k inputs fill whole blocks; k < 0: the last -k do; 0: neither, among
    the splits that leave one input or more on each side. The larger aligned part wins."""
    n = len(sizes)
    best, best_total = 0, 0
    for k in range(1, n):
        for signed, head in ((k, sizes[:k]), (-k, sizes[n - k :])):
            total = sum(head)
            if total % MULTIPLE == 0 and total > best_total:
                best, best_total = signed, total
    return best


def _drop_unread(graph: onnx.GraphProto, names: set[str]) -> None:
    """Of the initializers ``names`` (the split convolutions' whole weights), those that no node
    of the graph reads any more; nothing else (a subgraph may read an outer initializer)."""
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name not in names or t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def aligned_model(
    model: OnnxModel, data: bytes, settings: Settings, probe: np.ndarray
) -> tuple[OnnxModel, bytes]:
    """``model`` (loaded from ``data``) and its bytes, with its convolutions aligned when that
    can help (the CPU provider, every graph optimisation on), changes the graph, and keeps the
    output on ``probe`` within :data:`TOLERANCE` (relative to its scale, at least 1); else
    ``model`` and ``data`` as they came, with the reason logged where a rewrite was tried."""
    if model.provider != "CPUExecutionProvider" or settings.graph_optimization != "all":
        return model, data
    try:
        rewritten = onnx.load_from_string(data)
        split = align(rewritten)
    except Exception as exc:  # onnx's checker and shape inference raise their own types
        _keep(model, f"the graph cannot be rewritten: {exc}")
        return model, data
    if not split:
        return model, data
    new_data = rewritten.SerializeToString()
    try:
        new = OnnxModel.load(model.name, new_data, model.input_name, model.output_name, settings)
        want = model.run(probe)
        diff = float(np.max(np.abs(new.run(probe) - want), initial=0.0))
        scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    except Exception as exc:  # ModelLoadError, or ORT's own error types from the run
        _keep(model, str(exc))
        return model, data
    if not diff <= TOLERANCE * scale:  # also a NaN
        _keep(model, f"outputs differ by {diff:.3g} on the probe")
        return model, data
    logger.info(
        "convolutions aligned for the CPU kernels",
        extra={"model": model.name, "convolutions": split, "max_abs_diff": diff},
    )
    return new, new_data


def _keep(model: OnnxModel, why: str) -> None:
    logger.warning("graph kept as written", extra={"model": model.name, "why": why})
