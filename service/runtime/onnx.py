"""Thin ONNX Runtime wrappers: session options, provider choice, one-call inference."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from contract.errors import ModelLoadError
from service.settings import Settings

logger = logging.getLogger("guard.runtime")

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(settings: Settings) -> ort.SessionOptions:
    """Session options set on purpose, from the settings."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _OPT_LEVELS[settings.graph_optimization]
    options.log_severity_level = 3  # errors only; ORT's own warnings are not JSON
    spin = "1" if settings.ort_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return options


def requested_providers(preference: Sequence[str], available: Sequence[str]) -> list[str]:
    """The preferred providers that this onnxruntime build offers, in preference order."""
    chosen = [p for p in preference if p in available]
    return chosen or ["CPUExecutionProvider"]


def provider_in_use(session_providers: Sequence[str], preference: Sequence[str]) -> str:
    """The provider a session actually runs on: the most preferred one it loaded.

    ``session.get_providers()`` lists what the session registered; a GPU provider that failed to
    initialise (no device, missing CUDA libraries) is absent there even when it is installed.
    """
    for provider in preference:
        if provider in session_providers:
            return provider
    return session_providers[0] if session_providers else "unknown"


@dataclass
class OnnxModel:
    """One ONNX graph with one input and one output."""

    name: str  # file name, for messages
    session: ort.InferenceSession
    input_name: str
    output_name: str
    provider: str

    @classmethod
    def load(
        cls,
        name: str,
        data: bytes,
        input_name: str,
        output_name: str,
        settings: Settings,
    ) -> OnnxModel:
        wanted = requested_providers(settings.providers, ort.get_available_providers())
        try:
            session = ort.InferenceSession(
                data, sess_options=session_options(settings), providers=wanted
            )
        except Exception as exc:  # ORT raises its own Fail / InvalidProtobuf / ... types
            raise ModelLoadError(f"{name}: ONNX Runtime cannot load it: {exc}") from exc
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        if input_name not in inputs:
            raise ModelLoadError(f"{name}: no input {input_name!r} (graph has {inputs})")
        if output_name not in outputs:
            raise ModelLoadError(f"{name}: no output {output_name!r} (graph has {outputs})")
        provider = provider_in_use(session.get_providers(), settings.providers)
        return cls(name, session, input_name, output_name, provider)

    def input_shape(self) -> list[int | str | None]:
        for i in self.session.get_inputs():
            if i.name == self.input_name:
                return list(i.shape)
        return []

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 -> the graph's single output."""
        (out,) = self.session.run([self.output_name], {self.input_name: batch})
        return np.asarray(out)
