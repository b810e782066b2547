"""Where a model set's target runs: here (local mode) or on an upstream V2 server (proxy mode).

Both backends answer :meth:`detect` with the same :class:`Detection`: the decisions, and the
target's outputs as V2 tensors whose first N rows are on the images as given. With the
de-trigger detector they have 2N rows, the last N on the de-triggered copies (``[x; AE(x)]``);
with STRIP the rows after the first N (if any) are on the superimposed copies. The guard and the
V2 data plane use only that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from service.engine import BatchEngine
from service.modelset import Detriggered, ModelSet, Scored
from service.protocol.infer_type import InferRequest, InferTensor
from service.scoring import Decisions, decide
from service.settings import Detector
from service.upstream.client import UpstreamClient

logger = logging.getLogger("guard.target")


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


class Target(Protocol):
    engine: BatchEngine[Any]
    mode: str  # "local" or "proxy"

    @property
    def versions(self) -> tuple[str, ...]:
        """The V2 model versions this target answers to."""
        ...

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    def readiness(self) -> tuple[bool, str]: ...

    async def detect(
        self, x: np.ndarray, call: Call, detector: Detector = Detector.detrigger
    ) -> Detection: ...


class LocalTarget:
    """AE and target in this process, in one engine batch (the guard service's own mode)."""

    mode = "local"

    def __init__(self, model_set: ModelSet, engine: BatchEngine[Scored]) -> None:
        self.model_set = model_set
        self.engine = engine

    @property
    def versions(self) -> tuple[str, ...]:
        return ("1",)

    def start(self) -> None:
        self.engine.start()

    async def stop(self) -> None:
        await self.engine.stop()

    def readiness(self) -> tuple[bool, str]:
        return True, "ready"

    async def detect(
        self, x: np.ndarray, call: Call, detector: Detector = Detector.detrigger
    ) -> Detection:
        scored = await self.engine.submit(x, detector.value)
        parts = [scored.logits_x] + ([] if scored.logits_ae is None else [scored.logits_ae])
        logits = np.concatenate(parts).astype(np.float32)  # (N, K) or, detrigger, (2N, K)
        name = self.model_set.manifest.target.output_name
        return Detection(
            scored.decisions,
            [InferTensor.from_numpy(name, logits)],
            self.model_set.name,
            "1",
            {},
            detector,
        )


class ProxyTarget:
    """The AE here (batched by the engine), the target on the upstream server: one upstream
    request with the batch [x; AE(x)] of 2N images per caller request."""

    mode = "proxy"

    def __init__(
        self,
        model_set: ModelSet,
        engine: BatchEngine[Detriggered],
        upstream: UpstreamClient,
        probe_interval_s: float,
    ) -> None:
        self.model_set = model_set
        self.engine = engine
        self.upstream = upstream
        self.probe_interval_s = probe_interval_s
        self._prober: asyncio.Task[None] | None = None

    @property
    def versions(self) -> tuple[str, ...]:
        version = self.upstream.config.version
        return (version,) if version else ()

    def start(self) -> None:
        self.engine.start()
        self._prober = asyncio.get_running_loop().create_task(self._probe_loop(), name="probe")

    async def stop(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        await self.engine.stop()

    async def _probe_loop(self) -> None:
        while True:
            try:
                await self.upstream.probe()
            except Exception:  # a bug in probing must not stop probing
                logger.exception("upstream probe failed", extra={"model": self.model_set.name})
            await asyncio.sleep(self.probe_interval_s)

    def readiness(self) -> tuple[bool, str]:
        return self.upstream.ready, self.upstream.reason

    async def detect(
        self, x: np.ndarray, call: Call, detector: Detector = Detector.detrigger
    ) -> Detection:
        """One upstream request per caller request: [x; AE(x)] (2N images, the AE batched by
        the engine) or, for STRIP, [x; superimposed copies] (N * (n + 1) images)."""
        n = x.shape[0]
        strip = self.model_set.require_strip() if detector is Detector.strip else None
        if strip is not None:
            # Superimposition is plain numpy (no model): off the event loop, not batched.
            batch = await asyncio.to_thread(strip.batch, x)
        else:
            x_ae = (await self.engine.submit(x)).images
            batch = np.concatenate([x, x_ae]).astype(np.float32, copy=False)  # (2N, C, H, W)
        request = InferRequest(
            [InferTensor.from_numpy(self.upstream.input_name(), batch)],
            id=call.request_id,
            parameters=call.parameters,
        )
        classes = len(self.model_set.manifest.classes)
        response, logits = await self.upstream.infer(request, call.headers, classes)
        if strip is not None:
            decisions, _ = strip.decide(logits, n)
        else:
            decisions = decide(logits[:n], logits[n:], self.model_set.manifest.decision)
        return Detection(
            decisions,
            response.outputs,
            response.model_name or self.upstream.config.model,
            response.model_version,
            response.parameters,
            detector,
        )
