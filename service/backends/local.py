"""Local mode: the AE and the target classifier both run in this process, in one batch."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from contract.modes import Detector
from service.backends.base import Call, Detection
from service.protocol.infer_type import InferTensor
from service.runtime.modelset import ModelSet, Scored


class LocalBackend:
    mode = "local"

    def __init__(self, model_set: ModelSet) -> None:
        self.model_set = model_set
        runs: dict[Detector, Callable[[np.ndarray], Any]] = {
            Detector.detrigger: model_set.infer_scored
        }
        if model_set.strip is not None:
            runs[Detector.strip] = model_set.strip_scored
        if Detector.both in model_set.detectors:
            runs[Detector.both] = model_set.both_scored  # one target call for both detectors
        if Detector.repaired in model_set.detectors:
            runs[Detector.repaired] = model_set.repaired_scored
        if Detector.detrigger_or_repaired in model_set.detectors:
            runs[Detector.detrigger_or_repaired] = model_set.detrigger_or_repaired_scored
        self._runs = runs

    @property
    def versions(self) -> tuple[str, ...]:
        return ("1",)

    @property
    def batch_runs(self) -> Mapping[Detector, Callable[[np.ndarray], Any]]:
        return self._runs

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def readiness(self) -> tuple[bool, str]:
        return True, "ready"

    async def complete(
        self, x: np.ndarray, batched: Scored, call: Call, detector: Detector
    ) -> Detection:
        parts = [batched.logits_x] + ([] if batched.logits_ae is None else [batched.logits_ae])
        logits = np.concatenate(parts).astype(np.float32)  # (N, K), or with an AE (2N, K)
        name = self.model_set.manifest.target.output_name
        return Detection(
            batched.decisions,
            [InferTensor.from_numpy(name, logits)],
            self.model_set.name,
            "1",
            {},
            detector,
            batched.images_ae,
        )
