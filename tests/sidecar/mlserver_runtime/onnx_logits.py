"""An MLServer custom runtime that serves an ONNX classifier's logits over V2.

Runs inside MLServer's own virtualenv (.venv-mlserver), never imported by the guard's tests.
If the file named by the env var SLOW_FILE exists, each predict first sleeps for the number of
seconds written in it: how the tests slow the upstream past the guard's timeout. The names of
the HTTP headers it received come back in the response parameter ``seen_headers`` (JSON text),
so the tests can check the guard's header allow-list.
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


class OnnxLogits(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self._settings)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = ort.InferenceSession(
            path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        slow = os.environ.get("SLOW_FILE")
        if slow and Path(slow).exists():
            await asyncio.sleep(float(Path(slow).read_text() or "0"))
        headers = getattr(payload.parameters, "headers", None) or {}
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        (logits,) = self._session.run(None, {self._input: x})
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            parameters={
                "served_by": "mlserver-onnx-logits",
                "seen_headers": json.dumps(sorted(k.lower() for k in headers)),
            },
            outputs=[NumpyCodec.encode_output("logits", logits)],
        )
