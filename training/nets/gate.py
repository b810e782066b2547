"""The unchanged-image gate of a de-trigger AE graph (issue 20; contract/unchanged.py).

    y = AE(x);  out = x where max |y - x| <= tolerance over the image (and y is finite), else y

appended to an exported AE's ONNX graph. The guard skips the target's second pass for every
image that the AE returns bit for bit unchanged, so the gate makes clean images cheap: an
image that the AE would move by a few grey levels at most is passed as it is. Where the AE
undoes a trigger it moves the trigger's pixels by far more than a faint tolerance, so those
images pass the gate untouched; how far a gate may go is measured, per set, by the calibration
that follows it (the clean images it passes) and by the detection report (the triggered ones).

The gate reads and writes a set in place (:func:`gate_model_set`): detrigger.onnx and the
manifest's ``detrigger`` entry (file hash, ``unchanged_tolerance``, and a record of the gate:
the ungated graph's sha256, the command) change; the thresholds must then be calibrated again,
which `detrigger-guard calibrate --unchanged-tolerance` does in the same run. A gated graph is
gated again from its ungated body, never twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from contract.unchanged import reduce_per_image
from training.nets.manifest_file import write_manifest

PREFIX = "unchanged_gate/"  # the gate's node and tensor names
UNGATED = PREFIX + "ungated"  # the AE's own output, renamed


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def ungated(model: onnx.ModelProto, output_name: str) -> onnx.ModelProto:
    """``model`` without a gate (itself when it has none)."""
    nodes = [n for n in model.graph.node if not n.name.startswith(PREFIX)]
    if len(nodes) == len(model.graph.node):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    for node in nodes:
        node.input[:] = [output_name if i == UNGATED else i for i in node.input]
        node.output[:] = [output_name if o == UNGATED else o for o in node.output]
        out.graph.node.append(node)
    kept = [i for i in out.graph.initializer if not i.name.startswith(PREFIX)]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    return out


def add_gate(
    model: onnx.ModelProto, input_name: str, output_name: str, tolerance: float
) -> onnx.ModelProto:
    """A copy of the AE graph ``model`` with the gate at ``tolerance`` (> 0) on its output; the
    input and output names stay, so the manifest's names still hold."""
    if not tolerance > 0.0:
        raise ValueError(f"the unchanged tolerance must be > 0, got {tolerance}")
    out = onnx.ModelProto()
    out.CopyFrom(ungated(model, output_name))
    graph = out.graph
    rank = next((len(i.type.tensor_type.shape.dim) for i in graph.input if i.name == input_name), 0)
    if rank < 2:
        raise ValueError(f"the AE graph has no image input {input_name!r} of known rank")
    for node in graph.node:  # the AE's output, also where a node of its own reads it
        node.input[:] = [UNGATED if i == output_name else i for i in node.input]
        node.output[:] = [UNGATED if o == output_name else o for o in node.output]
    p = PREFIX
    opset = _opset(out)
    compare = "LessOrEqual" if opset >= 12 else None
    nodes = [
        helper.make_node("Sub", [UNGATED, input_name], [p + "diff"], name=p + "sub"),
        helper.make_node("Abs", [p + "diff"], [p + "abs"], name=p + "abs"),
        *reduce_per_image("ReduceMax", p + "abs", p + "max", rank, opset, p + "max"),
        # ReduceMax may drop a NaN; a sum never does: a non-finite AE output is never gated.
        *reduce_per_image("ReduceSum", p + "abs", p + "sum", rank, opset, p + "sum"),
        helper.make_node("Equal", [p + "sum", p + "sum"], [p + "finite"], name=p + "finite"),
    ]
    if compare:
        nodes.append(
            helper.make_node(compare, [p + "max", p + "tolerance"], [p + "within"], name=p + "le")
        )
    else:  # LessOrEqual arrived in opset 12: not (max > tolerance)
        nodes += [
            helper.make_node("Greater", [p + "max", p + "tolerance"], [p + "over"], name=p + "gt"),
            helper.make_node("Not", [p + "over"], [p + "within"], name=p + "le"),
        ]
    nodes += [
        helper.make_node("And", [p + "within", p + "finite"], [p + "keep"], name=p + "and"),
        helper.make_node("Where", [p + "keep", input_name, UNGATED], [output_name],
                         name=p + "where"),
    ]  # fmt: skip
    graph.node.extend(nodes)
    graph.initializer.append(
        helper.make_tensor(p + "tolerance", TensorProto.FLOAT, [], [float(tolerance)])
    )
    onnx.checker.check_model(out)
    return out


@contextlib.contextmanager
def gate_model_set(folder: Path, tolerance: float | None, command: str) -> Iterator[dict]:
    """Gate the set ``folder``'s AE at ``tolerance`` in place (0 or None: remove the gate), for
    the body of the ``with``, which calibrates the set again; if the body raises, the graph and
    the manifest are put back as they were. Yields the gate's record."""
    manifest_path = folder / "manifest.json"
    before = manifest_path.read_bytes()
    raw = json.loads(before)
    spec = raw["detrigger"]
    graph_path = folder / spec["file"]
    graph_bytes = graph_path.read_bytes()
    model = onnx.load_from_string(graph_bytes)
    body = ungated(model, spec["output_name"])
    new = add_gate(body, spec["input_name"], spec["output_name"], tolerance) if tolerance else body
    data = new.SerializeToString()
    record = {
        "tolerance": float(tolerance or 0.0),
        "ungated_sha256": hashlib.sha256(body.SerializeToString()).hexdigest(),
        "command": command,
    }
    entry = {k: v for k, v in spec.items() if k not in ("unchanged_tolerance", "gate")}
    entry["sha256"] = hashlib.sha256(data).hexdigest()
    entry["size_bytes"] = len(data)
    if tolerance:
        entry["unchanged_tolerance"] = float(tolerance)
        entry["gate"] = record
    raw["detrigger"] = entry
    try:
        graph_path.write_bytes(data)
        write_manifest(folder, raw)
        yield record
    except BaseException:
        graph_path.write_bytes(graph_bytes)
        manifest_path.write_bytes(before)
        raise
