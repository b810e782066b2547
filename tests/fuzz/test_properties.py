"""Property tests of the guard's parsers: whatever the bytes, a parsed value or the guard's own
error, never another exception (issue 19: a 500 is a bug).

- ``InferRequest.from_rest`` (a caller's V2 body, JSON or JSON + binary tensor data) and the
  image decoders raise only GuardError subclasses that map to a 4xx status;
- ``InferResponse.from_rest`` (an upstream's answer, proxy mode) raises only ValueError, which
  the upstream client turns into a 502 ``upstream_error``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from contract.errors import GuardError
from service.api.error_responses import status_of
from service.api.v2_images import files_from_tensor, images_from_tensor
from service.imaging import decode
from service.protocol.infer_type import DATATYPES, InferRequest, InferResponse, InferTensor

# FUZZ_SCALE=5 multiplies the examples, for a deeper run by hand (CI runs 1).
FUZZ = settings(
    max_examples=300 * max(1, int(os.environ.get("FUZZ_SCALE", "1"))),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CHW = (1, 28, 28)
DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"inputs":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
HUGE_INT = b"1" + b"0" * 5_000


def assert_guard_4xx(call: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``call``; a GuardError with a 4xx status is fine, any other exception fails."""
    try:
        return call(*args, **kwargs)
    except GuardError as exc:
        status = status_of(exc)
        assert 400 <= status < 500, f"{type(exc).__name__} maps to {status}: {exc.message}"
        assert exc.message, "a guard error must say what was wrong"
        return None
    except Exception as exc:  # noqa: BLE001 - the property: nothing else escapes
        pytest.fail(f"{type(exc).__name__} escaped (a 500): {str(exc)[:300]}")


def assert_only_value_error(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except ValueError:
        return None
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"{type(exc).__name__} escaped the upstream-answer parser: {str(exc)[:300]}")


# --- strategies ---------------------------------------------------------------------------
huge_ints = st.one_of(
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**64 + 2),
    st.integers(min_value=-(2**64), max_value=-(2**63) + 2),
    st.sampled_from([-1, 256, 300, 999, 65536, -(2**31) - 1, 2**32, 10**30]),
)
numbers = st.one_of(huge_ints, st.floats(allow_nan=True, allow_infinity=True))
json_values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=30,
)
datatypes = st.one_of(
    st.sampled_from(list(DATATYPES)),
    st.sampled_from([[], {}, 1, None, True, "fp32", ""]),
    json_values,
)
shapes = st.one_of(
    st.lists(st.integers(min_value=0, max_value=30), max_size=4),
    st.lists(huge_ints, max_size=4),
    json_values,
)
tensor_data = st.one_of(
    st.lists(numbers, max_size=12),
    st.lists(st.lists(numbers, max_size=4), max_size=4),
    st.lists(st.text(max_size=6), max_size=6),
    json_values,
)
parameters = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(["binary_data_size", "layout", "guard_mode", "guard_resize", "x"]),
        json_values,
        max_size=3,
    ),
    json_values,
)


@st.composite
def tensor_objects(draw: st.DrawFn) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "name": draw(st.one_of(st.just("images"), json_values)),
        "datatype": draw(datatypes),
        "shape": draw(shapes),
    }
    if draw(st.booleans()):
        obj["data"] = draw(tensor_data)
    params = draw(parameters)
    if params is not None:
        obj["parameters"] = params
    return obj


@st.composite
def v2_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": draw(st.lists(tensor_objects(), max_size=3))}
    for key, strategy in (
        ("id", json_values),
        ("parameters", parameters),
        ("outputs", json_values),
    ):
        if draw(st.booleans()):
            body[key] = draw(strategy)
    return body


def dumps(value: Any) -> bytes:
    # allow_nan: JSON text may say NaN / Infinity; Python's parser reads them.
    return json.dumps(value, allow_nan=True).encode()


# --- InferRequest.from_rest (a caller's V2 body) ------------------------------------------
def out_of_range(datatype: str, value: str) -> bytes:
    body = f'{{"inputs":[{{"name":"x","datatype":"{datatype}","shape":[1],"data":[{value}]}}]}}'
    return body.encode()


ISSUE_REPRODUCERS = [
    b'{"inputs":[{"name":"x","datatype":"UINT8","shape":[1,1,28,28],"data":[300]}]}',
    out_of_range("UINT8", "-1"),
    out_of_range("UINT8", "256"),
    out_of_range("UINT16", "-1"),
    out_of_range("UINT32", "-1"),
    out_of_range("INT8", "128"),
    out_of_range("INT64", str(2**63)),
    out_of_range("UINT64", str(2**64)),
    out_of_range("FP32", "1e400"),
    out_of_range("FP16", "1e400"),
    out_of_range("INT32", str(10**30)),
    out_of_range("BOOL", str(10**30)),
    out_of_range("FP64", HUGE_INT.decode()),
    DEEP,
    DEEP_OBJECT,
    b'{"inputs":[{"name":"x","datatype":"UINT8","shape":[' + HUGE_INT + b'],"data":[1]}]}',
    b'{"inputs":[{"name":"x","datatype":"UINT8","shape":[' + b"9" * 40 + b'],"data":[1]}]}',
    b'{"inputs":[{"name":"x","datatype":[],"shape":[1],"data":[1]}]}',
    b'{"inputs":[{"name":"x","datatype":{},"shape":[1],"data":[1]}]}',
    b'{"inputs":[{"name":"x","datatype":"BYTES","shape":[1],"data":[[[]]]}]}',
    b'{"inputs":[{"name":"x","datatype":"FP32","shape":[2],"data":[[1],[2,3]]}]}',
    out_of_range("UINT8", "1e400"),
    # dims past numpy's limit whose product is 0, so the element count matches
    b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1180591620717411303424,0],"data":[]}]}',
]
# BYTES binary tensor data with a huge shape: the count must be checked before allocating.
BINARY_REPRODUCERS = [
    b'{"inputs":[{"name":"x","datatype":"BYTES","shape":[%s],"parameters":{"binary_data_size":0}}]}'
    % dims
    for dims in (b"1000000000000", b"1180591620717411303424", b"0,1180591620717411303424")
]


@pytest.mark.parametrize("body", ISSUE_REPRODUCERS, ids=range(len(ISSUE_REPRODUCERS)))
def test_issue_reproducers_give_a_4xx(body: bytes) -> None:
    assert_guard_4xx(InferRequest.from_rest, body, None)


@pytest.mark.parametrize("head", BINARY_REPRODUCERS, ids=range(len(BINARY_REPRODUCERS)))
def test_huge_binary_bytes_shapes_give_a_4xx(head: bytes) -> None:
    assert_guard_4xx(InferRequest.from_rest, head, len(head))


@FUZZ
@given(st.one_of(json_values.map(dumps), v2_bodies().map(dumps)))
def test_request_json_parser_raises_only_guard_4xx(body: bytes) -> None:
    request = assert_guard_4xx(InferRequest.from_rest, body, None)
    if request is not None:
        for tensor in request.inputs:
            assert tensor.datatype in DATATYPES
            assert list(tensor.data.shape) == tensor.shape


@FUZZ
@given(st.binary(max_size=300), st.one_of(st.none(), huge_ints))
def test_request_parser_on_arbitrary_bytes_raises_only_guard_4xx(
    body: bytes, header_length: int | None
) -> None:
    assert_guard_4xx(InferRequest.from_rest, body, header_length)


@st.composite
def binary_bodies(draw: st.DrawFn) -> tuple[bytes, int | None]:
    """A JSON header whose tensors claim binary_data_size, then arbitrary bytes."""
    tensors = []
    for _ in range(draw(st.integers(1, 3))):
        tensor = draw(tensor_objects())
        tensor.pop("data", None)
        size = draw(st.one_of(st.integers(0, 64), huge_ints, json_values))
        tensor["parameters"] = {"binary_data_size": size}
        tensors.append(tensor)
    head = dumps({"inputs": tensors})
    tail = draw(st.binary(max_size=128))
    header_length = draw(
        st.one_of(st.just(len(head)), st.none(), st.integers(-2, len(head) + len(tail) + 2))
    )
    return head + tail, header_length


@FUZZ
@given(binary_bodies())
@example((b'{"inputs":[{"name":"x","datatype":"UINT8","shape":[' + HUGE_INT + b"]}]}", 70))
def test_request_binary_parser_raises_only_guard_4xx(case: tuple[bytes, int | None]) -> None:
    body, header_length = case
    assert_guard_4xx(InferRequest.from_rest, body, header_length)


# --- InferResponse.from_rest (an upstream's answer) ---------------------------------------
UPSTREAM_REPRODUCERS = [
    b'{"outputs":[{"name":"logits","datatype":"UINT8","shape":[1],"data":[999]}]}',
    b'{"outputs":[{"name":"logits","datatype":"FP32","shape":[1],"data":[1e400]}]}',
    b'{"outputs":[{"name":"logits","datatype":"INT64","shape":[1],"data":[' + HUGE_INT + b"]}]}",
    b'{"outputs":[{"name":"logits","datatype":[],"shape":[1],"data":[1]}]}',
    b'{"outputs":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    DEEP,
]


@pytest.mark.parametrize("body", UPSTREAM_REPRODUCERS, ids=range(len(UPSTREAM_REPRODUCERS)))
def test_upstream_answer_reproducers_give_a_value_error(body: bytes) -> None:
    assert_only_value_error(InferResponse.from_rest, body, None)


@FUZZ
@given(
    st.one_of(
        json_values.map(dumps),
        v2_bodies().map(lambda b: dumps({"model_name": "m", "outputs": b["inputs"]})),
        st.binary(max_size=200),
    ),
    st.one_of(st.none(), st.integers(-2, 300)),
)
def test_upstream_answer_parser_raises_only_value_error(
    body: bytes, header_length: int | None
) -> None:
    assert_only_value_error(InferResponse.from_rest, body, header_length)


# --- the image decoders -------------------------------------------------------------------
def _png(size: tuple[int, int] = (28, 28), mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 7).save(buffer, format="PNG")
    return buffer.getvalue()


VALID_IMAGES = [_png(), _png((5, 3), "RGB"), _png((28, 28), "P")]


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid image with some bytes changed, cut short or padded: reaches the decoders."""
    data = bytearray(draw(st.sampled_from(VALID_IMAGES)))
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=16))


image_bytes = st.one_of(st.binary(max_size=400), mutated_images())


@FUZZ
@given(image_bytes, st.booleans(), st.sampled_from([1, 3]))
@example(b"", False, 1)
@example(VALID_IMAGES[1], False, 1)
def test_image_decoder_raises_only_guard_4xx(data: bytes, resize: bool, channels: int) -> None:
    out = assert_guard_4xx(
        decode,
        data,
        index=0,
        filename="fuzz.png",
        channels=channels,
        height=28,
        width=28,
        resize=resize,
        max_pixels=512 * 512,
    )
    if out is not None:
        assert out.shape == (channels, 28, 28) and out.dtype == np.float32
        assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


def _bytes_tensor(items: list[bytes], binary: bool) -> InferTensor:
    array = np.empty(len(items), dtype=object)
    array[:] = items if binary else [base64.b64encode(i) for i in items]
    return InferTensor("images", "BYTES", [len(items)], array, from_binary=binary)


def _decode_v2_files(tensor: InferTensor) -> np.ndarray:
    files = files_from_tensor(tensor, CHW)
    c, h, w = CHW
    decoded = [
        decode(f.data, index=i, filename=f.filename, channels=c, height=h, width=w,
               resize=False, max_pixels=512 * 512)
        for i, f in enumerate(files)
    ]  # fmt: skip
    return np.stack(decoded)


@FUZZ
@given(st.lists(image_bytes, min_size=1, max_size=3), st.booleans())
def test_v2_bytes_images_raise_only_guard_4xx(items: list[bytes], binary: bool) -> None:
    out = assert_guard_4xx(_decode_v2_files, _bytes_tensor(items, binary))
    if out is not None:
        assert out.shape == (len(items), *CHW)


@FUZZ
@given(st.binary(max_size=200))
def test_v2_bytes_text_that_is_not_base64_gives_a_4xx(text: bytes) -> None:
    array = np.empty(1, dtype=object)
    array[0] = text
    tensor = InferTensor("images", "BYTES", [1], array, from_binary=False)
    assert_guard_4xx(_decode_v2_files, tensor)


@FUZZ
@given(
    st.sampled_from(["FP32", "UINT8"]),
    st.lists(st.integers(0, 30), min_size=0, max_size=5),
    st.sampled_from([None, "NCHW", "NHWC", "nhwc", 3, [], "HWC"]),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
)
def test_v2_pixel_tensors_raise_only_guard_4xx(
    datatype: str, shape: list[int], layout: Any, fill: float
) -> None:
    dtype = DATATYPES[datatype]
    count = int(np.prod(shape)) if shape else 1
    if count > 20_000:
        shape = [1, 1, 28, 28]
        count = 784
    value = fill if datatype == "FP32" else (int(fill) % 256 if np.isfinite(fill) else 0)
    data = np.full(count, value, dtype=dtype).reshape(shape)
    params = {} if layout is None else {"layout": layout}
    tensor = InferTensor("images", datatype, shape, data, params)
    out = assert_guard_4xx(images_from_tensor, tensor, InferRequest([tensor]), CHW)
    if out is not None:
        assert out.shape[1:] == CHW and np.isfinite(out).all()


def test_binary_bytes_split_is_checked() -> None:
    """A BYTES tensor whose element length runs past its data is a 400, not an IndexError."""
    head = dumps(
        {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1],
                     "parameters": {"binary_data_size": 6}}]}
    )  # fmt: skip
    body = head + struct.pack("<I", 100) + b"ab"
    with pytest.raises(GuardError) as caught:
        InferRequest.from_rest(body, len(head))
    assert status_of(caught.value) == 400
