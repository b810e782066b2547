"""A misbehaving V2 upstream for the fault tests: a real HTTP server in a thread whose answers
a test switches with ``FakeUpstream.fault``.

Behaving (fault "ok") it serves the tiny target model (tests/support/tiny_models.py) the way a
V2 server does: /ready, model metadata, and infer that runs the linear target in numpy on the
batch the guard sends ([x; AE(x)], FP32 NCHW), in JSON or, when the guard sends binary tensor
data (an upstream configured with binary: true), answering in binary too. Each fault breaks
one thing; the bin_* faults break the binary answer.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from tests.support.tiny_models import TinySpec, target_weights

MODEL = "tiny"
OUTPUT = "logits"
NO_HEADERS: dict[str, str] = {}


# Faults of GET /v2/models/<m>: answers that are not a V2 model metadata object.
BAD_METADATA: dict[str, Any] = {
    "metadata_list": [1, 2, 3],
    "metadata_null": None,
    "metadata_empty": {},
    "metadata_inputs_string": {"name": MODEL, "platform": "x", "inputs": "abc", "outputs": "d"},
    "metadata_tensor_not_object": {"name": MODEL, "platform": "x", "inputs": [1], "outputs": [1]},
    "metadata_names_not_strings": {
        "name": MODEL,
        "platform": "x",
        "inputs": [{"name": ["x"], "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
        "outputs": [{"name": {"a": 1}, "datatype": 7, "shape": "x"}],
    },
}


def _deep(n: int = 100_000) -> bytes:
    return b'{"outputs":' + b"[" * n + b"]" * n + b"}"


class FakeUpstream:
    """``fault`` names what goes wrong (see FAULTS); "ok" behaves."""

    def __init__(self, spec: TinySpec, slow_s: float = 3.0) -> None:
        self.spec = spec
        self.slow_s = slow_s
        self.weights, self.bias = target_weights(spec)
        self.fault = "ok"
        self.infer_calls = 0
        self.last_headers: dict[str, str] = {}  # of the last infer call, names lower-cased
        self.infer_headers: list[dict[str, str]] = []  # of each infer call, names lowercased
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- the model ------------------------------------------------------------------------
    def metadata(self) -> Any:
        bad = BAD_METADATA.get(self.fault)
        if bad is not None:
            return bad
        c, h, w = self.spec.channels, self.spec.height, self.spec.width
        return {
            "name": MODEL,
            "versions": ["1"],
            "platform": "fake",
            "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, c, h, w]}],
            "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, self.spec.classes]}],
        }

    def logits(self, body: bytes, header_length: int | None) -> np.ndarray:
        """The target on the request's batch: JSON data, or binary FP32 after the JSON."""
        if header_length is None:
            tensor = json.loads(body)["inputs"][0]
            x = np.asarray(tensor["data"], dtype=np.float32)
        else:
            tensor = json.loads(body[:header_length])["inputs"][0]
            x = np.frombuffer(body[header_length:], dtype="<f4")
        return x.reshape(tensor["shape"][0], -1) @ self.weights + self.bias  # (2N, K)

    def binary_answer(self, logits: np.ndarray) -> tuple[int, bytes, dict[str, str]]:
        """The answer in the binary tensor data extension, under the bin_* faults."""
        fault = self.fault
        rows, k = logits.shape
        if fault == "bin_nan_detriggered":
            logits[rows // 2 :] = np.nan
        raw = np.ascontiguousarray(logits, dtype="<f4").tobytes()
        datatype, size = "FP32", len(raw)
        if fault == "bin_size_past_end":
            size += 8
        elif fault == "bin_size_odd":
            size, raw = size - 1, raw[:-1]
        elif fault == "bin_uint8_logits":
            datatype, raw = "UINT8", bytes(rows * k)
            size = len(raw)
        output = {"name": OUTPUT, "datatype": datatype, "shape": [rows, k]}
        output["parameters"] = {"binary_data_size": size}
        head = json.dumps({"model_name": MODEL, "model_version": "1", "outputs": [output]})
        length = str(len(head))
        if fault == "bin_header_junk":
            length = "abc"
        elif fault == "bin_header_past_end":
            length = str(len(head) + len(raw) + 10)
        body = head.encode() + raw
        return 200, body, {"Inference-Header-Content-Length": length}

    def answer(self, body: bytes, header_length: int | None) -> tuple[int, bytes, dict[str, str]]:
        """(status, body, extra headers) of an infer call under the current fault."""
        fault = self.fault
        if fault == "http_500":
            return 500, b'{"error": "upstream exploded"}', {}
        if fault == "deep_json":
            return 200, _deep(), {}
        if fault == "not_json":
            return 200, b"\x00\xff not json", {}
        logits = self.logits(body, header_length)
        if header_length is not None and (fault == "ok" or fault.startswith("bin_")):
            return self.binary_answer(logits)
        rows, k = logits.shape
        half = rows // 2
        datatype, shape = "FP32", [rows, k]
        data: list[Any] = logits.reshape(-1).tolist()
        if fault == "nan_detriggered":  # only f(AE(x)) is NaN
            logits[half:] = np.nan
            data = logits.reshape(-1).tolist()
        elif fault == "nan_all":
            data = [float("nan")] * (rows * k)
        elif fault == "inf_input_half":  # f(x) +inf for the backdoor class, f(AE(x)) fine
            logits[:half, 0] = np.inf
            data = logits.reshape(-1).tolist()
        elif fault == "uint8_overflow":
            datatype, data = "UINT8", [999] * (rows * k)
        elif fault == "huge_int":
            datatype, data = "INT64", [10**30] * (rows * k)
        elif fault == "wrong_rows":
            shape, data = [half, k], logits[:half].reshape(-1).tolist()
        elif fault == "wrong_classes":
            shape, data = [rows, k + 1], np.pad(logits, ((0, 0), (0, 1))).reshape(-1).tolist()
        elif fault == "shape_data_mismatch":
            shape = [rows, k + 3]  # the data has rows * k elements
        elif fault == "bytes_logits":
            datatype, data = "BYTES", ["x"] * (rows * k)
        elif fault == "datatype_list":
            datatype = []  # type: ignore[assignment]
        out = {
            "model_name": MODEL,
            "model_version": "1",
            "outputs": [{"name": OUTPUT, "datatype": datatype, "shape": shape, "data": data}],
        }
        return 200, json.dumps(out, allow_nan=True).encode(), {}

    # --- HTTP -----------------------------------------------------------------------------
    def _handler(self) -> Callable[..., BaseHTTPRequestHandler]:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] = NO_HEADERS) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the guard gave up (fault "slow")

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                base = f"/v2/models/{MODEL}"
                if self.path in (f"{base}/ready", f"{base}/versions/1/ready"):
                    self._send(200, b'{"ready": true}')
                elif self.path in (base, f"{base}/versions/1"):
                    self._send(200, json.dumps(upstream.metadata()).encode())
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                upstream.infer_calls += 1
                upstream.last_headers = {k.lower(): v for k, v in self.headers.items()}
                upstream.infer_headers.append({k.lower(): v for k, v in self.headers.items()})
                if upstream.fault == "drop":
                    # Close the connection without a word.
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if upstream.fault == "slow":
                    time.sleep(upstream.slow_s)
                raw_length = self.headers.get("Inference-Header-Content-Length")
                length = None if raw_length is None else int(raw_length)
                self._send(*upstream.answer(body, length))

        return Handler
