"""The gRPC codec of the V2 tensor type: raw and typed contents, parameters, malformed
messages refused with what is accepted."""

from __future__ import annotations

import numpy as np
import pytest

from contract.errors import InvalidRequest
from service.protocol.grpc import grpc_predict_v2_pb2 as pb
from service.protocol.infer_type import InferRequest, InferResponse, InferTensor


def _round_trip(request: InferRequest) -> InferRequest:
    msg = request.to_grpc("tiny", "1")
    return InferRequest.from_grpc(pb.ModelInferRequest.FromString(msg.SerializeToString()))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.uint8, np.int64, np.float64])
def test_raw_inputs_round_trip(dtype: type) -> None:
    x = (np.arange(24).reshape(2, 1, 3, 4) % 7).astype(dtype)
    back = _round_trip(InferRequest([InferTensor.from_numpy("images", x)], id="r1"))
    assert back.id == "r1"
    assert back.inputs[0].from_binary
    np.testing.assert_array_equal(back.inputs[0].data, x)
    assert back.inputs[0].data.dtype == x.dtype


def test_typed_contents_are_read() -> None:
    msg = pb.ModelInferRequest(model_name="tiny")
    tensor = msg.inputs.add(name="images", datatype="UINT8", shape=[1, 2, 2, 1])
    tensor.contents.uint_contents.extend([0, 128, 255, 7])
    request = InferRequest.from_grpc(msg)
    assert request.inputs[0].data.dtype == np.uint8
    assert request.inputs[0].data.reshape(-1).tolist() == [0, 128, 255, 7]


def test_bytes_tensor_raw_and_typed() -> None:
    files = np.array([b"\x89PNG-a", b"b"], dtype=object)
    back = _round_trip(InferRequest([InferTensor.from_numpy("files", files)]))
    assert back.inputs[0].datatype == "BYTES"
    assert list(back.inputs[0].data) == [b"\x89PNG-a", b"b"]
    msg = pb.ModelInferRequest()
    tensor = msg.inputs.add(name="files", datatype="BYTES", shape=[2])
    tensor.contents.bytes_contents.extend([b"x", b"yz"])
    assert list(InferRequest.from_grpc(msg).inputs[0].data) == [b"x", b"yz"]


def test_parameters_keep_their_kind() -> None:
    request = InferRequest(
        [InferTensor.from_numpy("i", np.zeros((1, 1), np.float32))],
        parameters={"guard_mode": "block", "guard_resize": True, "n": 3, "t": 0.25},
    )
    back = _round_trip(request)
    assert back.parameters == {"guard_mode": "block", "guard_resize": True, "n": 3, "t": "0.25"}


@pytest.mark.parametrize("raw", [True, False])
def test_response_round_trip(raw: bool) -> None:
    logits = np.arange(6, dtype=np.float32).reshape(2, 3)
    response = InferResponse(
        "tiny", [InferTensor.from_numpy("logits", logits)], "1", "r1", {"guard_flagged_count": 1}
    )
    msg = response.to_grpc(raw)
    assert len(msg.raw_output_contents) == (1 if raw else 0)
    back = InferResponse.from_grpc(pb.ModelInferResponse.FromString(msg.SerializeToString()))
    np.testing.assert_array_equal(back.outputs[0].data, logits)
    assert (back.model_name, back.model_version, back.id) == ("tiny", "1", "r1")
    assert back.parameters == {"guard_flagged_count": 1}


def _request(**tensor: object) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest()
    msg.inputs.add(**{"name": "images", "datatype": "FP32", "shape": [1, 2], **tensor})
    return msg


@pytest.mark.parametrize(
    ("msg", "says"),
    [
        (pb.ModelInferRequest(), "inputs must be a non-empty list"),
        (_request(datatype="FLOAT"), "is not one of"),
        (_request(name=""), "name must be a non-empty string"),
        (_request(), "has 0 elements, the shape says 2"),
        (_request(datatype="FP16"), "travels only in raw contents"),
    ],
)
def test_malformed_requests_are_refused(msg: pb.ModelInferRequest, says: str) -> None:
    with pytest.raises(InvalidRequest, match=says) as info:
        InferRequest.from_grpc(msg)
    assert "raw_input_contents" in info.value.accepted


def test_raw_contents_must_match_shape_and_inputs() -> None:
    msg = _request()
    msg.raw_input_contents.append(b"\x00" * 4)  # one FP32, the shape says two
    with pytest.raises(InvalidRequest, match="needs 8"):
        InferRequest.from_grpc(msg)
    msg = _request()
    msg.inputs.add(name="b", datatype="FP32", shape=[1])
    msg.raw_input_contents.append(b"\x00" * 8)
    with pytest.raises(InvalidRequest, match="1 raw_input_contents for 2 inputs"):
        InferRequest.from_grpc(msg)


def test_typed_integers_out_of_range_are_refused() -> None:
    msg = pb.ModelInferRequest()
    msg.inputs.add(name="i", datatype="UINT8", shape=[1]).contents.uint_contents.append(300)
    with pytest.raises(InvalidRequest, match="outside the UINT8 range"):
        InferRequest.from_grpc(msg)


def test_unusable_response_is_a_value_error() -> None:
    msg = pb.ModelInferResponse(model_name="m")
    msg.outputs.add(name="logits", datatype="FP32", shape=[2, 3])
    msg.raw_output_contents.append(b"\x00" * 4)
    with pytest.raises(ValueError, match="needs 24"):
        InferResponse.from_grpc(msg)


def test_contents_and_raw_contents_together_are_refused() -> None:
    msg = _request()
    msg.inputs[0].contents.fp32_contents.extend([0.0, 1.0])
    msg.raw_input_contents.append(b"\x00" * 8)
    with pytest.raises(InvalidRequest, match="both contents and raw contents"):
        InferRequest.from_grpc(msg)
    msg.inputs[0].contents.Clear()  # an empty contents message (MLServer sends one) is none
    msg.inputs[0].contents.SetInParent()
    assert InferRequest.from_grpc(msg).inputs[0].data.shape == (1, 2)
