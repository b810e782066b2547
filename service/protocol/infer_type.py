"""The ONE internal tensor type of the V2 protocol, with ``from_rest`` / ``to_rest`` and
``from_grpc`` / ``to_grpc`` at the edges.

A REST body is JSON, optionally followed by raw tensor bytes (the binary tensor data extension):
the ``Inference-Header-Content-Length`` header gives the JSON's length, and each tensor whose
``parameters.binary_data_size`` is set takes that many bytes from what follows, in order. BYTES
elements are a 4-byte little-endian length and the bytes, in both forms of the extension.
Nothing here knows about HTTP; callers pass the body bytes and the header's value.

Over gRPC (service/protocol/grpc/grpc_predict_v2.proto) a tensor's data is either typed
(``contents``: the repeated field of its datatype) or raw (``raw_input_contents`` /
``raw_output_contents``, one entry per tensor, laid out as binary tensor data). Parameters are
InferParameter values: bool, int64 or string; the guard sends a float as its text.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from contract.errors import InvalidParameter, InvalidRequest
from service.protocol.grpc import grpc_predict_v2_pb2 as pb

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
BINARY_DATA_SIZE = "binary_data_size"
V2_ACCEPTS = (
    "a V2 inference request: JSON {id?, parameters?, inputs: [{name, shape, datatype, data | "
    "parameters.binary_data_size}], outputs?}, optionally followed by binary tensor data with "
    "the Inference-Header-Content-Length header; datatypes " + ", ".join(DATATYPES)
)
V2_GRPC_ACCEPTS = (
    "a V2 ModelInferRequest: inputs [{name, datatype, shape, contents?}], each input's data in "
    "its typed contents field or in raw_input_contents (one entry per input, or none); "
    "datatypes " + ", ".join(DATATYPES)
)
# The typed contents field of each datatype (FP16 travels raw only).
GRPC_CONTENTS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


# numpy arrays have at most 64 dimensions and 2**63 elements; no image tensor needs more than
# a handful of dimensions, or one of 2**31 or more.
MAX_DIMS = 16
MAX_DIM = 2**31 - 1


def _bad(message: str) -> InvalidRequest:
    return InvalidRequest(message, accepted=V2_ACCEPTS)


# orjson turns an integer past 64 bits into a float; such a literal has 19 digits or more
# (-9223372036854775809, 18446744073709551616), where every integer of 18 digits fits.
LONG_DIGIT_RUN = 19
DOT = ord(".")


def _has_long_digit_run(text: bytes) -> bool:
    """Whether ``text`` holds LONG_DIGIT_RUN ASCII digits in a row that do not follow a '.'
    (numpy: a fraction of a millisecond on a 64-image body, where a regular expression takes
    longer than the parse). Digits after a '.' are a fraction's, never an integer's: a float
    below 0.01 written in full (0.0012345677556097507, as float32 pixels come out of numpy's
    tolist()) has such a run, and sending it to the standard library made the parse about 8
    times slower."""
    codes = np.frombuffer(text, dtype=np.uint8)
    others = np.flatnonzero((codes - np.uint8(48)) >= 10)  # wraps below '0': not a digit
    if others.size == 0:
        return codes.size >= LONG_DIGIT_RUN
    if others[0] >= LONG_DIGIT_RUN:  # a run at the start follows nothing
        return True
    # the character before each long run: the non-digit that starts its gap
    before = others[:-1][np.diff(others) > LONG_DIGIT_RUN]
    if codes.size - 1 - others[-1] >= LONG_DIGIT_RUN:
        before = np.append(before, others[-1])
    return bool((codes[before] != DOT).any())


def load_json(head: bytes | memoryview) -> Any:
    """JSON text -> Python objects. ValueError for anything that is not JSON the parser can
    hold: bad syntax or encoding, nesting past the interpreter's recursion limit, integers of
    over 4,300 digits (CPython's limit on int parsing).

    orjson parses first (about 8 times faster than the standard library on a V2 body); the
    standard library has the last word, so that what is accepted, and every value, stays as it
    was: orjson refuses what Python reads (NaN, Infinity, 1e400, lone surrogates, a BOM, other
    encodings, deep nesting), and those go to ``json``; so do texts with a long run of digits,
    where orjson would read an integer past 64 bits as a float."""
    text = bytes(head)
    if not _has_long_digit_run(text):
        try:
            return orjson.loads(text)
        except ValueError:  # orjson.JSONDecodeError
            pass
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(str(exc)) from exc


def boolean(value: Any, where: str) -> bool:
    """A V2 boolean parameter: a JSON boolean, or the text "true" / "false" (some clients send
    parameters as strings). Anything else is refused rather than read by truthiness, where
    "false" would mean True."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise InvalidParameter(f"{where} {value!r} is not a boolean", accepted=f"{where} true or false")


def datatype_of(dtype: np.dtype[Any]) -> str:
    for name, known in DATATYPES.items():
        if known == dtype or (name == "BYTES" and dtype.kind in "OSU"):
            return name
    raise ValueError(f"no V2 datatype for numpy {dtype}")


def split_body(body: bytes, header_length: int | None) -> tuple[Any, memoryview | None]:
    """A REST body -> (its JSON, the binary tensor data after it, or None without the
    Inference-Header-Content-Length header). ValueError when the header does not fit the body
    or the JSON does not parse."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise ValueError(
            f"Inference-Header-Content-Length {header_length} does not fit the body of "
            f"{len(body)} bytes"
        )
    head = body if header_length is None else body[:header_length]
    binary = None if header_length is None else memoryview(body)[header_length:]
    try:
        return load_json(head), binary
    except ValueError as exc:
        raise ValueError(f"the body is not valid JSON: {exc}") from exc


def _parameters(obj: Mapping[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise _bad(f"{where}.parameters must be an object")
    return dict(params)


def _split_bytes(raw: bytes | memoryview, count: int, where: str) -> list[bytes]:
    """BYTES elements in the binary form: 4-byte little-endian length, then the bytes."""
    out: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    while offset < len(view):
        if offset + 4 > len(view):
            raise _bad(f"{where}: truncated BYTES element length")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise _bad(f"{where}: BYTES element of {length} bytes runs past the tensor data")
        out.append(bytes(view[offset : offset + length]))
        offset += length
    if len(out) != count:
        raise _bad(f"{where}: {len(out)} BYTES elements, the shape says {count}")
    return out


def _join_bytes(items: Iterable[Any]) -> bytes:
    parts = []
    for item in items:
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(data)) + data)
    return b"".join(parts)


@dataclass
class InferTensor:
    """One named tensor; ``data`` is a numpy array of ``shape`` (object array of bytes for
    BYTES)."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)
    from_binary: bool = False  # arrived as binary tensor data (BYTES: raw, not text)

    @classmethod
    def from_numpy(
        cls, name: str, array: np.ndarray, parameters: dict[str, Any] | None = None
    ) -> InferTensor:
        return cls(name, datatype_of(array.dtype), list(array.shape), array, parameters or {})

    def take_rows(self, rows: np.ndarray) -> InferTensor:
        """This tensor's rows ``rows`` (an index array along the first axis)."""
        data = self.data[rows]
        return InferTensor(self.name, self.datatype, list(data.shape), data, self.parameters)

    @classmethod
    def from_rest(
        cls, obj: Any, binary: memoryview | None, offset: int, where: str
    ) -> tuple[InferTensor, int]:
        """Parse one tensor object; returns it and the offset after its binary data."""
        if not isinstance(obj, dict):
            raise _bad(f"{where} must be an object")
        name, datatype, shape = obj.get("name"), obj.get("datatype"), obj.get("shape")
        if not isinstance(name, str) or not name:
            raise _bad(f"{where}.name must be a non-empty string")
        if not isinstance(datatype, str) or datatype not in DATATYPES:
            raise _bad(f"{where}.datatype {datatype!r} is not one of {list(DATATYPES)}")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_DIMS
            or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape
            )
        ):
            raise _bad(
                f"{where}.shape must be a list of at most {MAX_DIMS} integers in [0, {MAX_DIM}]"
            )
        params = _parameters(obj, where)
        count = math.prod(shape)
        dtype = DATATYPES[datatype]
        size = params.pop(BINARY_DATA_SIZE, None)
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise _bad(f"{where}.parameters.binary_data_size must be a non-negative integer")
            if binary is None or offset + size > len(binary):
                raise _bad(f"{where}: binary_data_size {size} runs past the binary tensor data")
            raw = binary[offset : offset + size]
            offset += size
            if datatype == "BYTES":
                items = _split_bytes(raw, count, where)  # checks the count before allocating
                array = np.empty(count, dtype=object)
                array[:] = items
            else:
                if size != count * dtype.itemsize:
                    raise _bad(
                        f"{where}: {size} bytes of binary data, the shape {shape} of {datatype} "
                        f"needs {count * dtype.itemsize}"
                    )
                array = np.frombuffer(raw, dtype=dtype).copy()
        else:
            if "data" not in obj:
                raise _bad(f"{where} has neither data nor parameters.binary_data_size")
            array = _json_data(obj["data"], dtype, datatype, count, where)
        try:
            array = array.reshape(shape)
        except ValueError as exc:  # e.g. [2**31 - 1] * 3 + [0]: no elements, too many for numpy
            raise _bad(f"{where}.shape {shape} cannot hold a tensor: {exc}") from exc
        return cls(name, datatype, shape, array, params, size is not None), offset

    def to_rest(self, binary: bool) -> tuple[dict[str, Any], bytes]:
        """The JSON object and, when ``binary``, the raw bytes that follow the JSON."""
        obj: dict[str, Any] = {"name": self.name, "datatype": self.datatype, "shape": self.shape}
        params = {
            k: v for k, v in self.parameters.items() if k not in (BINARY_DATA_SIZE, "binary_data")
        }
        flat = self.data.reshape(-1)
        if binary:
            raw = (
                _join_bytes(flat)
                if self.datatype == "BYTES"
                else np.ascontiguousarray(flat, dtype=DATATYPES[self.datatype]).tobytes()
            )
            params[BINARY_DATA_SIZE] = len(raw)
            obj["parameters"] = params
            return obj, raw
        if params:
            obj["parameters"] = params
        if self.datatype == "BYTES":
            obj["data"] = [
                b.decode("utf-8", errors="replace") if isinstance(b, bytes) else str(b)
                for b in flat
            ]
        else:
            obj["data"] = flat.tolist()
        return obj, b""

    @classmethod
    def from_grpc(cls, msg: Any, raw: bytes | None, where: str) -> InferTensor:
        """One gRPC tensor (an input or output tensor message); ``raw`` is its entry of the
        raw contents, None when the request sends typed contents."""
        name, datatype, shape = msg.name, msg.datatype, list(msg.shape)
        if not name:
            raise _bad_grpc(f"{where}.name must be a non-empty string")
        if datatype not in DATATYPES:
            raise _bad_grpc(f"{where}.datatype {datatype!r} is not one of {list(DATATYPES)}")
        if len(shape) > MAX_DIMS or not all(0 <= d <= MAX_DIM for d in shape):
            raise _bad_grpc(f"{where}.shape must be at most {MAX_DIMS} integers in [0, {MAX_DIM}]")
        params = parameters_from_grpc(msg.parameters)
        count = math.prod(shape)
        dtype = DATATYPES[datatype]
        array: np.ndarray
        if raw is not None:
            if msg.HasField("contents") and msg.contents.ListFields():
                # (An empty contents message beside raw contents, as MLServer sends, is none.)
                raise _bad_grpc(f"{where} has both contents and raw contents")
            if datatype == "BYTES":
                array = np.empty(count, dtype=object)
                array[:] = _split_bytes(raw, count, where)
            else:
                if len(raw) != count * dtype.itemsize:
                    raise _bad_grpc(
                        f"{where}: {len(raw)} bytes of raw contents, the shape {shape} of "
                        f"{datatype} needs {count * dtype.itemsize}"
                    )
                array = np.frombuffer(raw, dtype=dtype).copy()
        else:
            field_name = GRPC_CONTENTS.get(datatype)
            if field_name is None:
                raise _bad_grpc(f"{where}: {datatype} travels only in raw contents")
            values = getattr(msg.contents, field_name)
            if len(values) != count:
                raise _bad_grpc(
                    f"{where}.contents.{field_name} has {len(values)} elements, the shape says "
                    f"{count}"
                )
            if datatype == "BYTES":
                array = np.empty(count, dtype=object)
                array[:] = [bytes(v) for v in values]
            else:
                wide = np.asarray(values)
                if wide.size and dtype.kind in "iu":
                    info = np.iinfo(dtype)
                    low, high = int(wide.min()), int(wide.max())
                    if low < info.min or high > info.max:
                        raise _bad_grpc(
                            f"{where}.contents holds {low if low < info.min else high}, "
                            f"outside the {datatype} range [{info.min}, {info.max}]"
                        )
                array = wide.astype(dtype)
        try:
            array = array.reshape(shape)
        except ValueError as exc:
            raise _bad_grpc(f"{where}.shape {shape} cannot hold a tensor: {exc}") from exc
        return cls(name, datatype, shape, array, params, raw is not None)

    def to_grpc(self, msg: Any, raw: bool) -> bytes:
        """Fill a gRPC tensor message; returns its raw contents when ``raw`` (else b"" and the
        typed contents are set). FP16 is always raw."""
        msg.name, msg.datatype = self.name, self.datatype
        msg.shape.extend(int(d) for d in self.shape)
        params = {k: v for k, v in self.parameters.items() if k != BINARY_DATA_SIZE}
        parameters_to_grpc(params, msg.parameters)
        flat = self.data.reshape(-1)
        if raw or self.datatype not in GRPC_CONTENTS:
            if self.datatype == "BYTES":
                return _join_bytes(flat)
            return np.ascontiguousarray(flat, dtype=DATATYPES[self.datatype]).tobytes()
        target = getattr(msg.contents, GRPC_CONTENTS[self.datatype])
        if self.datatype == "BYTES":
            target.extend(b.encode("utf-8") if isinstance(b, str) else bytes(b) for b in flat)
        else:
            target.extend(flat.tolist())
        return b""


def _bad_grpc(message: str) -> InvalidRequest:
    return InvalidRequest(message, accepted=V2_GRPC_ACCEPTS)


def parameters_from_grpc(params: Any) -> dict[str, Any]:
    """A map of InferParameter -> plain values (bool, int or str; unset: None)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        choice = value.WhichOneof("parameter_choice")
        out[key] = None if choice is None else getattr(value, choice)
    return out


def parameters_to_grpc(params: Mapping[str, Any], target: Any) -> None:
    """Plain values -> a map of InferParameter. bool, int and str keep their kind; anything
    else (a float such as the verdict's threshold) goes as its text; None is left out."""
    for key, value in params.items():
        if isinstance(value, np.generic):
            value = value.item()
        if value is None:
            continue
        if isinstance(value, bool):
            target[key].bool_param = value
        elif isinstance(value, int) and -(2**63) <= value < 2**63:
            target[key].int64_param = value
        elif isinstance(value, str):
            target[key].string_param = value
        else:
            target[key].string_param = json.dumps(value, default=str)


def _json_data(
    data: Any, dtype: np.dtype[Any], datatype: str, count: int, where: str
) -> np.ndarray:
    """A tensor's JSON ``data`` (flat or nested lists) -> a flat array of ``dtype``.

    Strict, so that no value changes on the way in: BOOL takes only booleans, integer types
    only integers within their range, float types integers or floats.
    """
    if not isinstance(data, list):
        raise _bad(f"{where}.data must be a list")
    if datatype == "BYTES":
        flat = np.asarray(data, dtype=object).reshape(-1)
        if not all(isinstance(x, str) for x in flat):
            raise _bad(f"{where}.data of a BYTES tensor must hold strings")
        array = np.empty(len(flat), dtype=object)
        array[:] = [x.encode("utf-8") for x in flat]
    else:
        try:
            # numpy infers the values' kind: b (bools), i/u (ints), f (floats), O (ints past
            # 64 bits, None, mixed), U (strings); ragged nesting raises ValueError.
            raw = np.asarray(data).reshape(-1)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise _bad(f"{where}.data does not hold {datatype} values: {exc}") from exc
        allowed = "b" if dtype.kind == "b" else "iu" if dtype.kind in "iu" else "iuf"
        if raw.size and raw.dtype.kind not in allowed:
            what = {"b": "booleans", "iu": "integers", "iuf": "numbers"}[allowed]
            found = (
                "null, values of mixed kinds or integers past 64 bits"
                if raw.dtype.kind == "O"
                else f"{raw.dtype.kind!r}-kind values"
            )
            raise _bad(f"{where}.data of a {datatype} tensor must hold {what}, not {found}")
        if raw.size and dtype.kind in "iu":
            info = np.iinfo(dtype)
            low, high = int(raw.min()), int(raw.max())
            if low < info.min or high > info.max:
                raise _bad(
                    f"{where}.data holds {low if low < info.min else high}, outside the "
                    f"{datatype} range [{info.min}, {info.max}]"
                )
        array = raw.astype(dtype)
    if array.size != count:
        raise _bad(f"{where}.data has {array.size} elements, the shape says {count}")
    return array


@dataclass
class RequestedOutput:
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferRequest:
    inputs: list[InferTensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None

    @classmethod
    def from_rest(cls, body: bytes, header_length: int | None) -> InferRequest:
        """Parse a REST request body; ``header_length`` is Inference-Header-Content-Length."""
        try:
            obj, binary = split_body(body, header_length)
        except ValueError as exc:
            raise _bad(str(exc)) from exc
        if not isinstance(obj, dict):
            raise _bad("the request must be a JSON object")
        request_id = obj.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise _bad("id must be a string")
        raw_inputs = obj.get("inputs")
        if not isinstance(raw_inputs, list) or not raw_inputs:
            raise _bad("inputs must be a non-empty list")
        inputs, offset = [], 0
        for i, raw in enumerate(raw_inputs):
            tensor, offset = InferTensor.from_rest(raw, binary, offset, f"inputs[{i}]")
            inputs.append(tensor)
        if binary is not None and offset != len(binary):
            raise _bad(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
        outputs = None
        if obj.get("outputs") is not None:
            if not isinstance(obj["outputs"], list):
                raise _bad("outputs must be a list")
            outputs = []
            for i, raw in enumerate(obj["outputs"]):
                if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
                    raise _bad(f"outputs[{i}] must be an object with a name")
                outputs.append(RequestedOutput(raw["name"], _parameters(raw, f"outputs[{i}]")))
        request = cls(inputs, request_id, _parameters(obj, "request"), outputs)
        for wanted in outputs or [RequestedOutput("")]:
            request.wants_binary(wanted.name)  # a bad binary_data flag is refused up front
        return request

    def to_rest(self, binary: bool = False) -> tuple[bytes, int | None]:
        """The body and its Inference-Header-Content-Length (None for plain JSON), as the guard
        sends it to an upstream. ``binary`` sends the inputs as binary tensor data and asks for
        binary outputs."""
        heads, chunks = [], []
        for tensor in self.inputs:
            head, raw = tensor.to_rest(binary)
            heads.append(head)
            chunks.append(raw)
        obj: dict[str, Any] = {"inputs": heads}
        if self.id is not None:
            obj["id"] = self.id
        parameters = dict(self.parameters)
        if binary:
            parameters["binary_data_output"] = True
        if parameters:
            obj["parameters"] = parameters
        if self.outputs is not None:
            obj["outputs"] = [
                {"name": o.name, **({"parameters": o.parameters} if o.parameters else {})}
                for o in self.outputs
            ]
        head_bytes = json.dumps(obj, separators=(",", ":")).encode()
        if not binary:
            return head_bytes, None
        return head_bytes + b"".join(chunks), len(head_bytes)

    @classmethod
    def from_grpc(cls, msg: Any) -> InferRequest:
        """Parse a ModelInferRequest (model name and version are the caller's to read)."""
        if not msg.inputs:
            raise _bad_grpc("inputs must be a non-empty list")
        raw = list(msg.raw_input_contents)
        if raw and len(raw) != len(msg.inputs):
            raise _bad_grpc(
                f"{len(raw)} raw_input_contents for {len(msg.inputs)} inputs; give one per "
                "input, or none"
            )
        inputs = [
            InferTensor.from_grpc(tensor, raw[i] if raw else None, f"inputs[{i}]")
            for i, tensor in enumerate(msg.inputs)
        ]
        outputs = None
        if msg.outputs:
            outputs = [
                RequestedOutput(o.name, parameters_from_grpc(o.parameters)) for o in msg.outputs
            ]
        return cls(inputs, msg.id or None, parameters_from_grpc(msg.parameters), outputs)

    def to_grpc(self, model_name: str, model_version: str | None) -> Any:
        """A ModelInferRequest with every input in raw contents, as the guard sends it to an
        upstream."""
        msg = pb.ModelInferRequest(model_name=model_name, model_version=model_version or "")
        if self.id is not None:
            msg.id = self.id
        parameters_to_grpc(self.parameters, msg.parameters)
        for tensor in self.inputs:
            msg.raw_input_contents.append(tensor.to_grpc(msg.inputs.add(), raw=True))
        for wanted in self.outputs or []:
            out = msg.outputs.add(name=wanted.name)
            parameters_to_grpc(wanted.parameters, out.parameters)
        return msg

    def wants_binary(self, output_name: str) -> bool:
        """Whether the caller asked for this output as binary tensor data."""
        for wanted in self.outputs or []:
            if wanted.name == output_name and "binary_data" in wanted.parameters:
                return boolean(wanted.parameters["binary_data"], "outputs.parameters.binary_data")
        return boolean(
            self.parameters.get("binary_data_output", False), "parameters.binary_data_output"
        )


@dataclass
class InferResponse:
    model_name: str
    outputs: list[InferTensor]
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_rest(cls, body: bytes, header_length: int | None) -> InferResponse:
        """Parse a V2 response body (from an upstream server), JSON or JSON + binary tensor
        data. Raises ValueError when it is not one."""
        obj, binary = split_body(body, header_length)
        if not isinstance(obj, dict) or not isinstance(obj.get("outputs"), list):
            raise ValueError("not a V2 inference response: no outputs list")
        outputs, offset = [], 0
        try:
            for i, raw in enumerate(obj["outputs"]):
                tensor, offset = InferTensor.from_rest(raw, binary, offset, f"outputs[{i}]")
                outputs.append(tensor)
        except InvalidRequest as exc:
            raise ValueError(exc.message) from exc
        params = obj.get("parameters") or {}
        return cls(
            str(obj.get("model_name", "")),
            outputs,
            None if obj.get("model_version") is None else str(obj["model_version"]),
            None if obj.get("id") is None else str(obj["id"]),
            dict(params) if isinstance(params, dict) else {},
        )

    @classmethod
    def from_grpc(cls, msg: Any) -> InferResponse:
        """Parse a ModelInferResponse (from an upstream server). Raises ValueError when it is
        not a usable one."""
        raw = list(msg.raw_output_contents)
        if raw and len(raw) != len(msg.outputs):
            raise ValueError(f"{len(raw)} raw_output_contents for {len(msg.outputs)} outputs")
        try:
            outputs = [
                InferTensor.from_grpc(tensor, raw[i] if raw else None, f"outputs[{i}]")
                for i, tensor in enumerate(msg.outputs)
            ]
        except InvalidRequest as exc:
            raise ValueError(exc.message) from exc
        return cls(
            msg.model_name,
            outputs,
            msg.model_version or None,
            msg.id or None,
            parameters_from_grpc(msg.parameters),
        )

    def to_grpc(self, raw: bool = True) -> Any:
        """A ModelInferResponse: outputs in raw_output_contents when ``raw`` (or when one is
        FP16, which has no typed field), else in their typed contents."""
        raw = raw or any(t.datatype not in GRPC_CONTENTS for t in self.outputs)
        msg = pb.ModelInferResponse(
            model_name=self.model_name, model_version=self.model_version or "", id=self.id or ""
        )
        parameters_to_grpc(self.parameters, msg.parameters)
        for tensor in self.outputs:
            data = tensor.to_grpc(msg.outputs.add(), raw)
            if raw:
                msg.raw_output_contents.append(data)
        return msg

    def to_rest(self, request: InferRequest | None = None) -> tuple[bytes, int | None]:
        """The body and the Inference-Header-Content-Length (None for plain JSON)."""
        obj: dict[str, Any] = {"model_name": self.model_name}
        if self.model_version is not None:
            obj["model_version"] = self.model_version
        if self.id is not None:
            obj["id"] = self.id
        obj["parameters"] = self.parameters
        outputs, chunks = [], []
        for tensor in self.outputs:
            binary = request is not None and request.wants_binary(tensor.name)
            out, raw = tensor.to_rest(binary)
            outputs.append(out)
            if binary:
                chunks.append(raw)
        obj["outputs"] = outputs
        head = json.dumps(obj, separators=(",", ":")).encode()
        if not chunks:
            return head, None
        return head + b"".join(chunks), len(head)
