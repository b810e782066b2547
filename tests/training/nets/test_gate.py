"""The unchanged-image gate on an AE graph (training/nets/gate.py): an image the AE moves by
at most the tolerance comes back bit for bit; any other, and any non-finite output, as the
AE gave it; a gated set is gated again from its ungated body, and a failed calibration puts
the set back."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.support.tiny_models import (
    TinySpec,
    add_trigger,
    build_model_set,
    clean_image,
    detrigger_graph,
)
from training.nets.gate import PREFIX, add_gate, gate_model_set, ungated

SPEC = TinySpec()


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["images_out"], {"images": x})[0]


def images() -> np.ndarray:
    """Two clean images (the tiny AE zeroes their dim top-left corner: a change of at most
    19/255) and two triggered ones (a white corner zeroed: a change of 1)."""
    clean = [clean_image(SPEC, 1 + i, seed=i) for i in range(2)]
    stack = np.stack([*clean, *(add_trigger(im) for im in clean)])
    return stack[:, None].astype(np.float32) / 255.0


@pytest.mark.parametrize("opset", [17, 18])  # axes an attribute, then an input
def test_the_gate_returns_small_changes_bit_for_bit_and_passes_large_ones(opset: int) -> None:
    ae = detrigger_graph(SPEC)
    ae.opset_import[0].version = opset
    x = images()
    plain = run(ae, x)
    gated = run(add_gate(ae, "images", "images_out", 0.1), x)
    assert np.array_equal(gated[:2], x[:2])  # clean: moved by <= 0.075, returned as they came
    assert np.array_equal(gated[2:], plain[2:])  # triggered: moved by 1, the AE's output
    tight = run(add_gate(ae, "images", "images_out", 0.05), x)
    assert not np.array_equal(tight[:2], x[:2])  # a tolerance below the change gates nothing


def test_a_non_finite_output_is_never_gated() -> None:
    ae = detrigger_graph(SPEC)
    x = images()
    x[0, 0, 10, 10] = np.nan  # the tiny AE keeps that pixel: NaN out, beside tiny changes
    gated = run(add_gate(ae, "images", "images_out", 0.5), x)
    assert np.isnan(gated[0, 0, 10, 10]) and np.array_equal(gated[0, 0, 0, 0], np.float32(0.0))
    assert np.array_equal(gated[1], x[1])


def test_gating_again_replaces_the_gate_and_ungated_gives_the_graph_back() -> None:
    ae = detrigger_graph(SPEC)
    once = add_gate(ae, "images", "images_out", 0.1)
    twice = add_gate(once, "images", "images_out", 0.01)
    gates = [n for n in twice.graph.node if n.name.startswith(PREFIX + "where")]
    assert len(gates) == 1
    assert ungated(twice, "images_out").SerializeToString() == ae.SerializeToString()
    with pytest.raises(ValueError, match="> 0"):
        add_gate(ae, "images", "images_out", 0.0)


def test_a_set_is_gated_in_place_and_put_back_when_the_body_fails(tmp_path: Path) -> None:
    folder = build_model_set(tmp_path / "tiny", SPEC)
    manifest_before = (folder / "manifest.json").read_bytes()
    graph_before = (folder / "detrigger.onnx").read_bytes()
    with (
        pytest.raises(RuntimeError, match="calibration failed"),
        gate_model_set(folder, 0.1, "test"),
    ):
        assert (folder / "detrigger.onnx").read_bytes() != graph_before
        raise RuntimeError("calibration failed")
    assert (folder / "manifest.json").read_bytes() == manifest_before
    assert (folder / "detrigger.onnx").read_bytes() == graph_before

    with gate_model_set(folder, 0.1, "the command") as record:
        pass
    entry = json.loads((folder / "manifest.json").read_text())["detrigger"]
    data = (folder / "detrigger.onnx").read_bytes()
    assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["size_bytes"] == len(data)
    assert entry["unchanged_tolerance"] == 0.1 and entry["gate"] == record
    assert record["ungated_sha256"] == hashlib.sha256(graph_before).hexdigest()
    assert record["command"] == "the command"
    with gate_model_set(folder, 0.0, "off"):  # 0: the gate removed, the graph as it was
        pass
    entry = json.loads((folder / "manifest.json").read_text())["detrigger"]
    assert "unchanged_tolerance" not in entry and "gate" not in entry
    assert hashlib.sha256((folder / "detrigger.onnx").read_bytes()).hexdigest() == entry["sha256"]
    assert (
        onnx.load(folder / "detrigger.onnx").SerializeToString()
        == onnx.load_from_string(graph_before).SerializeToString()
    )


def test_a_graph_that_reads_its_own_output_still_checks_and_round_trips() -> None:
    """A node of the AE that reads the AE's output (here a second graph output) reads the
    ungated one; removing the gate gives the graph back."""
    ae = detrigger_graph(SPEC)
    ae.graph.node.append(onnx.helper.make_node("Identity", ["images_out"], ["also_out"]))
    also_out = onnx.ValueInfoProto()
    also_out.CopyFrom(ae.graph.output[0])
    also_out.name = "also_out"
    ae.graph.output.append(also_out)
    gated = add_gate(ae, "images", "images_out", 0.1)
    x = images()
    session = ort.InferenceSession(gated.SerializeToString(), providers=["CPUExecutionProvider"])
    out, also = session.run(["images_out", "also_out"], {"images": x})
    assert np.array_equal(out[:2], x[:2]) and np.array_equal(also, run(ae, x))
    assert ungated(gated, "images_out").SerializeToString() == ae.SerializeToString()
