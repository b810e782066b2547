"""Local mode: a model set whose own graphs give non-finite numbers for a triggered image.

Issue 19: non-finite logits or scores "from any source, local or upstream" must never yield
"answered"; the guard refuses the request (422 unscorable, or 502/503) or counts the image as
flagged, and never writes a score that is not a number. Two tiny sets made in the test
session: one whose de-trigger AE turns a triggered image into NaN, one whose target gives NaN
logits on it. A clean image is unaffected in both and must still be answered with its class.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tests.support.server import RunningServer, serve
from tests.support.tiny_models import (
    OPSET,
    PATCH,
    TinySpec,
    add_trigger,
    build_model_set,
    clean_image,
    detrigger_graph,
    png_bytes,
    sha256_of,
    target_graph,
)

pytestmark = pytest.mark.slow

LABEL = 3
# A refusal of the whole request: the image cannot be scored (422), or the guard's own error.
ERRORS = (422, 502, 503)


def nan_when_triggered(model: onnx.ModelProto, output: str) -> onnx.ModelProto:
    """Multiply ``output`` by 1 + 0 * log(1 - mean(top-left patch)): unchanged for a clean
    image (the patch is dark), NaN for a triggered one (mean 1: 0 * -inf)."""
    graph = model.graph
    inner = output + "_finite"
    for node in graph.node:
        node.output[:] = [inner if o == output else o for o in node.output]
    graph.initializer.extend(
        numpy_helper.from_array(np.asarray(v, dtype=dt), name)
        for name, v, dt in (
            ("nan_starts", [0, 0], np.int64),
            ("nan_ends", [PATCH, PATCH], np.int64),
            ("nan_axes", [2, 3], np.int64),
            ("nan_one", 1.0, np.float32),
            ("nan_zero", 0.0, np.float32),
        )
    )
    graph.node.extend(
        [
            helper.make_node("Slice", ["images", "nan_starts", "nan_ends", "nan_axes"], ["p"]),
            helper.make_node("ReduceMean", ["p"], ["m"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Sub", ["nan_one", "m"], ["d"]),
            helper.make_node("Log", ["d"], ["l"]),
            helper.make_node("Mul", ["l", "nan_zero"], ["z"]),
            helper.make_node("Add", ["z", "nan_one"], ["f"]),  # (N,): 1 or NaN
            helper.make_node("Unsqueeze", ["f", "nan_axes_u"], ["fu"]),
            helper.make_node("Mul", [inner, "fu"], [output]),
        ]
    )
    rank = len(graph.output[0].type.tensor_type.shape.dim)
    graph.initializer.append(
        numpy_helper.from_array(np.arange(1, rank, dtype=np.int64), "nan_axes_u")
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_nan_set(folder: Path, which: str) -> Path:
    # With STRIP and detector both too (issue 22): a NaN in either part must refuse as well.
    spec = TinySpec(name=f"nan{which}", strip_n=4, both=(0.5, 0.3))
    build_model_set(folder, spec)
    if which == "ae":
        onnx.save(
            nan_when_triggered(detrigger_graph(spec), "images_out"), folder / "detrigger.onnx"
        )
    else:
        onnx.save(nan_when_triggered(target_graph(spec), "logits"), folder / "target.onnx")
    manifest = json.loads((folder / "manifest.json").read_text())
    for part in ("target", "detrigger"):
        manifest[part]["sha256"] = sha256_of(folder / manifest[part]["file"])
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


@pytest.fixture(scope="module")
def nan_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("nan_sets")
    sets = [build_nan_set(root / "ae", "ae"), build_nan_set(root / "target", "target")]
    with serve(sets, {"GUARD_INTRA_OP_THREADS": "1"}) as server:
        yield server


SPEC = TinySpec()
CLEAN = clean_image(SPEC, LABEL, seed=7)
TRIGGERED = add_trigger(CLEAN)


def describe(response: httpx.Response) -> str:
    return f"{response.request.url.path} -> {response.status_code}: {response.text[:400]}"


@pytest.mark.parametrize("model", ["nanae", "nantarget"])
def test_clean_images_are_still_answered(nan_server: RunningServer, model: str) -> None:
    files = [("images", ("clean.png", png_bytes(CLEAN), "image/png"))]
    response = httpx.post(
        f"{nan_server.url}/classify", params={"model": model}, files=files, timeout=30
    )
    assert response.status_code == 200, describe(response)
    (result,) = response.json()["results"]
    assert not result["flagged"] and result["answer"]["class"] == LABEL, describe(response)


@pytest.mark.parametrize(
    ("mode", "detector"),
    [("block", "detrigger"), ("flag", "detrigger"), ("repair", "detrigger"), ("block", "both"),
     ("flag", "both"), ("flag", "strip")],
)  # fmt: skip
@pytest.mark.parametrize("model", ["nanae", "nantarget"])
def test_a_triggered_image_with_non_finite_numbers_is_never_answered(
    nan_server: RunningServer, model: str, mode: str, detector: str
) -> None:
    files = [
        ("images", ("clean.png", png_bytes(CLEAN), "image/png")),
        ("images", ("triggered.png", png_bytes(TRIGGERED), "image/png")),
    ]
    response = httpx.post(
        f"{nan_server.url}/classify",
        params={"model": model, "mode": mode, "detector": detector},
        files=files,
        timeout=30,
    )
    assert response.status_code != 500, describe(response)
    if response.status_code != 200:
        assert response.status_code in ERRORS, describe(response)
        return
    results = response.json()["results"]
    for result in results:
        assert isinstance(result["score"], (int, float)), describe(response)
        assert np.isfinite(result["score"]), describe(response)
        if result["strip_entropy"] is not None:
            assert np.isfinite(result["strip_entropy"]), describe(response)
    triggered = results[1]
    assert triggered["flagged"] is True, f"fail-open: {describe(response)}"
    if mode == "block":
        assert triggered["outcome"] == "blocked", f"fail-open: {describe(response)}"
    if mode == "repair":
        # A repaired class must come from finite numbers: the image's own class, never the
        # backdoor's class 0 (which is what argmax makes of NaN logits).
        assert triggered["outcome"] in ("repaired", "blocked"), describe(response)
        if triggered["answer"] is not None:
            assert triggered["answer"]["class"] == LABEL, f"fail-open: {describe(response)}"


@pytest.mark.parametrize("model", ["nanae", "nantarget"])
def test_v2_block_refuses_a_triggered_image_with_non_finite_numbers(
    nan_server: RunningServer, model: str
) -> None:
    x = (TRIGGERED.astype(np.float32) / 255.0)[None, None]
    body = {
        "inputs": [
            {
                "name": "images",
                "datatype": "FP32",
                "shape": list(x.shape),
                "data": x.ravel().tolist(),
            }
        ],
        "parameters": {"guard_mode": "block"},
    }
    response = httpx.post(f"{nan_server.url}/v2/models/{model}/infer", json=body, timeout=30)
    assert response.status_code in (403, *ERRORS), describe(response)
    assert isinstance(response.json()["error"], str), describe(response)
