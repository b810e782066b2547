"""Where a model set's target classifier runs: here (local) or on an upstream V2 server
(proxy). Both backends answer with the same :class:`Detection`.

A backend has two parts. Its batch functions (``batch_runs``, one per detector it batches) are
synchronous and run on a whole engine batch of several requests' images in the engine's thread.
:meth:`Backend.complete` then finishes one request from its rows of that batch: in local mode
nothing is left to do; in proxy mode it sends ``[x; AE(x)]`` to the upstream. The batching
engine (service.engine) drives both; backends know nothing of batching.

A detection's outputs are V2 tensors whose first N rows are on the images as given. With the
de-trigger detector they have 2N rows, the last N on the de-triggered copies ``[x; AE(x)]``;
with STRIP the rows after the first N (if any) are on the superimposed copies; with both, rows
N..2N-1 are on AE(x), and in proxy mode the superimposed copies follow; with repaired, local
mode's rows N..2N-1 are the repaired graph's logits on x, and proxy mode has the upstream's N.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from contract.modes import Detector
from contract.scoring import Decisions
from service.protocol.infer_type import InferTensor


@dataclass(frozen=True)
class Call:
    """What a caller's request adds to a detection: headers (the upstream client filters them
    through the allow-list), V2 request id and parameters to pass on."""

    headers: Mapping[str, str] = field(default_factory=dict)
    request_id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Detection:
    decisions: Decisions
    outputs: list[InferTensor]  # rows 0..N-1: f(x); detrigger: then f(AE(x)), 2N rows in all
    model_name: str
    model_version: str | None
    parameters: dict[str, Any]
    detector: Detector = Detector.detrigger
    detriggered_images: np.ndarray | None = None  # (N, C, H, W) AE(x); None without an AE


class Backend(Protocol):
    mode: str  # "local" or "proxy"

    @property
    def versions(self) -> tuple[str, ...]:
        """The V2 model versions this backend answers to."""
        ...

    @property
    def batch_runs(self) -> Mapping[Detector, Callable[[np.ndarray], Any]]:
        """Per detector: what one engine batch runs, (B, C, H, W) -> per-image rows that can be
        sliced and joined again. A detector absent here is not batched."""
        ...

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    def readiness(self) -> tuple[bool, str]: ...

    async def complete(
        self, x: np.ndarray, batched: Any, call: Call, detector: Detector
    ) -> Detection:
        """One request's detection, from its images and its rows of the batch (None when the
        detector is not batched)."""
        ...
