"""The V2 tensor type and its REST codec, JSON and binary tensor data, without a server."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from contract.errors import InvalidParameter, InvalidRequest
from service.protocol.infer_type import InferRequest, InferResponse, InferTensor, boolean


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


def tensor_body(**tensor: object) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "shape": [1], **tensor}]}).encode()


# Issue 19 #1-#3: each escaped the parser as OverflowError, RecursionError, ValueError or
# TypeError, i.e. a 500 (before the model lookup, so for any model name).
@pytest.mark.parametrize(
    ("body", "says"),
    [
        (tensor_body(datatype="UINT8", data=[300]), "outside the UINT8 range"),
        (tensor_body(datatype="UINT8", data=[-1]), "outside the UINT8 range"),
        (tensor_body(datatype="UINT16", data=[-1]), "outside the UINT16 range"),
        (tensor_body(datatype="UINT32", data=[-5]), "outside the UINT32 range"),
        (tensor_body(datatype="INT8", data=[128]), "outside the INT8 range"),
        (tensor_body(datatype="INT32", data=[10**30]), "past 64 bits"),
        (tensor_body(datatype="INT64", data=[2**63]), "outside the INT64 range"),
        (b'{"inputs":[{"name":"x","datatype":"UINT8","shape":[1],"data":[1e400]}]}',
         "must hold integers"),
        (tensor_body(datatype="UINT8", data=[1.5]), "must hold integers"),
        (tensor_body(datatype="BOOL", data=[1]), "must hold booleans"),
        (tensor_body(datatype="FP32", data=["1"]), "must hold numbers"),
        (tensor_body(datatype="FP32", data=[None]), "must hold numbers, not null"),
        (tensor_body(datatype="FP32", shape=[2], data=[[1.0], [2.0, 3.0]]), "does not hold"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"inputs":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1' + b"0" * 5000 + b'],"data":[1]}]}',
         "not valid JSON"),
        (tensor_body(datatype=[], data=[1]), "datatype"),
        (tensor_body(datatype={}, data=[1]), "datatype"),
        (tensor_body(datatype="FP32", shape=[2**70, 0], data=[]), "shape"),
        (tensor_body(datatype="FP32", shape=[2**31 - 1] * 3 + [0], data=[]), "cannot hold"),
        (tensor_body(datatype="FP32", shape=[1] * 17, data=[1.0]), "shape"),
    ],
)  # fmt: skip
def test_out_of_range_deep_or_odd_json_is_a_400(body: bytes, says: str) -> None:
    with pytest.raises(InvalidRequest, match=says):
        InferRequest.from_rest(body, None)


def test_a_bytes_tensor_of_a_huge_shape_is_refused_before_allocating() -> None:
    head = json.dumps(
        {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [2**31 - 1],
                     "parameters": {"binary_data_size": 0}}]}
    ).encode()  # fmt: skip
    with pytest.raises(InvalidRequest, match="0 BYTES elements, the shape says 2147483647"):
        InferRequest.from_rest(head, len(head))


@pytest.mark.parametrize("flag", ["yes", 1, [], None])
def test_boolean_parameters_are_booleans(flag: object) -> None:
    """Issue 19 #8: "false" read by truthiness was True. Only booleans or "true"/"false"."""
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [0.5]}],
         "parameters": {"binary_data_output": flag}}
    ).encode()  # fmt: skip
    with pytest.raises(InvalidParameter, match="binary_data_output"):
        InferRequest.from_rest(body, None)
    assert boolean("false", "p") is False and boolean("True", "p") is True


# Issue 19 #4: the upstream's answer goes through the same parser; it must fail only with
# ValueError, which the upstream client turns into a 502 upstream_error.
@pytest.mark.parametrize(
    "body",
    [
        b'{"outputs":[{"name":"l","datatype":"UINT8","shape":[1],"data":[999]}]}',
        b'{"outputs":[{"name":"l","datatype":"INT8","shape":[1],"data":[128]}]}',
        b'{"outputs":[{"name":"l","datatype":[],"shape":[1],"data":[1]}]}',
        b'{"outputs":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"outputs":[{"name":"l","datatype":"FP32","shape":[1' + b"0" * 5000 + b'],"data":[1]}]}',
    ],
)
def test_a_malformed_upstream_answer_is_a_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        InferResponse.from_rest(body, None)
