"""An MLServer custom runtime that serves an ONNX classifier's logits over V2.

Runs inside MLServer's own virtualenv (.venv-mlserver), copied into the model folder by
bench/mlserver.py; never imported by the guard or the benchmark. The benchmark's peer and the
sidecar tests' upstream both use it.

Session options come from the environment, so the benchmark can give it the guard's:
ONNX_LOGITS_INTRA_OP_THREADS (default 1), ONNX_LOGITS_INTER_OP_THREADS (default 1) and
ONNX_LOGITS_SPINNING ("0" or "1"; unset: ONNX Runtime's default).

Test hooks, on only when ONNX_LOGITS_TEST_HOOKS is "1": if the file named by SLOW_FILE exists,
each predict first sleeps for the number of seconds written in it (how the tests slow the
upstream past the guard's timeout); the names of the HTTP headers it received come back in the
response parameter ``seen_headers`` (JSON text), so the tests can check the guard's header
allow-list.
"""

import asyncio
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri

TEST_HOOKS = os.environ.get("ONNX_LOGITS_TEST_HOOKS") == "1"


def session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("ONNX_LOGITS_INTRA_OP_THREADS", "1"))
    options.inter_op_num_threads = int(os.environ.get("ONNX_LOGITS_INTER_OP_THREADS", "1"))
    spin = os.environ.get("ONNX_LOGITS_SPINNING")
    if spin in ("0", "1"):
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return options


class OnnxLogits(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self._settings)
        self._session = ort.InferenceSession(
            path, sess_options=session_options(), providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        parameters = {"served_by": "mlserver-onnx-logits"}
        if TEST_HOOKS:
            slow = os.environ.get("SLOW_FILE")
            if slow and Path(slow).exists():
                await asyncio.sleep(float(Path(slow).read_text() or "0"))
            headers = getattr(payload.parameters, "headers", None) or {}
            parameters["seen_headers"] = json.dumps(sorted(k.lower() for k in headers))
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        (logits,) = self._session.run(None, {self._input: x})
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            parameters=parameters,
            outputs=[NumpyCodec.encode_output("logits", logits)],
        )
