"""The V2 tensor type and its REST codec, JSON and binary tensor data, without a server."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from service.errors import InvalidRequest
from service.protocol.infer_type import InferRequest, InferResponse, InferTensor


def binary_request(header: dict, *chunks: bytes) -> tuple[bytes, int]:
    head = json.dumps(header).encode()
    return head + b"".join(chunks), len(head)


def test_json_request_with_nested_data() -> None:
    body = json.dumps({
        "id": "r1",
        "parameters": {"guard_mode": "repair"},
        "inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [3, 4]]}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }).encode()  # fmt: skip
    request = InferRequest.from_rest(body, None)
    (x,) = request.inputs
    assert x.data.dtype == np.int32 and x.data.tolist() == [[1, 2], [3, 4]]
    assert request.id == "r1" and request.parameters == {"guard_mode": "repair"}
    assert request.wants_binary("y") and not request.wants_binary("z")


def test_binary_request_fp32_uint8_and_bytes() -> None:
    fp = np.arange(6, dtype=np.float32).reshape(1, 2, 3) / 10
    u8 = np.array([[1, 2, 250]], dtype=np.uint8)
    files = [b"\x89PNG-one", b"two"]
    packed = b"".join(struct.pack("<I", len(f)) + f for f in files)
    header = {"inputs": [
        {"name": "a", "shape": [1, 2, 3], "datatype": "FP32",
         "parameters": {"binary_data_size": fp.nbytes}},
        {"name": "b", "shape": [1, 3], "datatype": "UINT8",
         "parameters": {"binary_data_size": 3, "layout": "NHWC"}},
        {"name": "c", "shape": [2], "datatype": "BYTES",
         "parameters": {"binary_data_size": len(packed)}},
    ]}  # fmt: skip
    body, length = binary_request(header, fp.tobytes(), u8.tobytes(), packed)
    a, b, c = InferRequest.from_rest(body, length).inputs
    np.testing.assert_array_equal(a.data, fp)
    np.testing.assert_array_equal(b.data, u8)
    assert b.parameters == {"layout": "NHWC"} and b.from_binary
    assert c.data.tolist() == files


@pytest.mark.parametrize(
    ("header", "data", "length", "says"),
    [
        ({"inputs": [{"name": "a", "shape": [2], "datatype": "FP32",
                      "parameters": {"binary_data_size": 8}}]}, b"\0" * 4, None, "runs past"),
        ({"inputs": [{"name": "a", "shape": [3], "datatype": "FP32",
                      "parameters": {"binary_data_size": 8}}]}, b"\0" * 8, None, "needs 12"),
        ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
         b"extra", None, "not claimed"),
        ({"inputs": [{"name": "a", "shape": [2], "datatype": "FP32", "data": [1.0]}]},
         b"", None, "shape says 2"),
        ({"inputs": [{"name": "a", "shape": [1], "datatype": "COMPLEX", "data": [1]}]},
         b"", None, "datatype"),
        ({"inputs": []}, b"", None, "non-empty"),
        ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}]},
         b"", 10_000, "does not fit"),
    ],
)  # fmt: skip
def test_malformed_requests_are_refused(
    header: dict, data: bytes, length: int | None, says: str
) -> None:
    body, head_length = binary_request(header, data)
    with pytest.raises(InvalidRequest, match=says):
        InferRequest.from_rest(body, length or head_length)


def test_response_round_trip_binary_and_json() -> None:
    logits = np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32)
    response = InferResponse(
        "m", [InferTensor.from_numpy("logits", logits), InferTensor.from_numpy("k", np.arange(3))],
        model_version="1", id="x", parameters={"guard_flagged_count": 1},
    )  # fmt: skip
    request = InferRequest(
        [InferTensor.from_numpy("in", np.zeros(1, np.float32))],
        parameters={"binary_data_output": True},
    )
    body, length = response.to_rest(request)
    assert length is not None
    head = json.loads(body[:length])
    sizes = [o["parameters"]["binary_data_size"] for o in head["outputs"]]
    assert sizes == [logits.nbytes, 3 * 8] and len(body) == length + sum(sizes)
    np.testing.assert_array_equal(
        np.frombuffer(body[length : length + sizes[0]], "<f4").reshape(3, 10), logits
    )
    # JSON: float32 values survive the text form exactly.
    body, length = response.to_rest(None)
    assert length is None
    parsed = InferResponse.from_rest(body, None)
    np.testing.assert_array_equal(parsed.outputs[0].data, logits)
    assert parsed.outputs[1].datatype == "INT64" and parsed.parameters["guard_flagged_count"] == 1


def test_binary_request_round_trip_as_sent_upstream() -> None:
    x = np.random.default_rng(1).random((4, 1, 3, 3), dtype=np.float32)
    request = InferRequest([InferTensor.from_numpy("images", x)], id="r", parameters={"a": 1})
    body, length = request.to_rest(binary=True)
    assert length is not None and len(body) == length + x.nbytes
    parsed = InferRequest.from_rest(body, length)
    np.testing.assert_array_equal(parsed.inputs[0].data, x)
    assert parsed.parameters == {"a": 1, "binary_data_output": True}
    assert parsed.wants_binary("anything")
    body, length = request.to_rest(binary=False)
    assert length is None
    np.testing.assert_array_equal(InferRequest.from_rest(body, None).inputs[0].data, x)
