"""Thin ONNX Runtime wrappers: session options, provider choice, one-call inference."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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


def with_options(
    providers: Sequence[str], settings: Settings, data: bytes
) -> list[tuple[str, dict[str, str]]]:
    """Each provider with its options for a session built from ``data``.

    TensorRT, with ``GUARD_TRT_CACHE_DIR`` set, keeps its engines and timing cache in a folder
    of their own for these bytes: ONNX Runtime keys an engine by the graph's names and shapes,
    not its weights, so two graphs of one architecture (a set whose AE was swapped, a repaired
    target) would otherwise share an engine built for the other's weights. The folder also
    names the ONNX Runtime version, whose TensorRT cannot read other versions' engines.
    """
    out: list[tuple[str, dict[str, str]]] = []
    for provider in providers:
        options: dict[str, str] = {}
        if provider == "TensorrtExecutionProvider" and settings.trt_cache_dir is not None:
            folder = trt_cache_folder(settings.trt_cache_dir, data)
            options = {
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(folder),
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": str(folder),
            }
        out.append((provider, options))
    return out


def trt_cache_folder(root: Path, data: bytes) -> Path:
    """The TensorRT cache folder of the graph ``data``, made if missing."""
    folder = root / f"ort-{ort.__version__}" / hashlib.sha256(data).hexdigest()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(f"GUARD_TRT_CACHE_DIR: cannot make {folder}: {exc}") from exc
    return folder


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
        providers = with_options(wanted, settings, data)
        try:
            session = ort.InferenceSession(
                data, sess_options=session_options(settings), providers=providers
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
