"""Proxy (sidecar) mode: the AE here, batched by the engine; the target classifier on an
upstream V2 server, one upstream request of ``[x; AE(x)]`` (2N images) per caller request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from contract.fusion import both_batch, both_scores, decide_both, decide_detrigger_or_repaired
from contract.modes import Detector
from contract.scoring import decide
from contract.unchanged import changed_rows, pair_rows, second_pass
from service.backends.base import Call, Detection
from service.backends.upstream import UpstreamClient
from service.protocol.infer_type import InferRequest, InferTensor
from service.runtime.modelset import AeAndRepaired, ModelSet, Rows

logger = logging.getLogger("guard.backends")


class ProxyBackend:
    mode = "proxy"

    def __init__(
        self, model_set: ModelSet, upstream: UpstreamClient, probe_interval_s: float
    ) -> None:
        self.model_set = model_set
        self.upstream = upstream
        self.probe_interval_s = probe_interval_s
        self._prober: asyncio.Task[None] | None = None
        # Only the local graphs run here in batches: the AE (for detrigger and both), the
        # repaired graph, or the two; STRIP's copies are built per request.
        self._runs: dict[Detector, Callable[[np.ndarray], Any]] = {
            Detector.detrigger: model_set.detrigger_only
        }
        if Detector.both in model_set.detectors:
            self._runs[Detector.both] = model_set.detrigger_only
        if Detector.repaired in model_set.detectors:
            self._runs[Detector.repaired] = model_set.repaired_only
        if Detector.detrigger_or_repaired in model_set.detectors:
            self._runs[Detector.detrigger_or_repaired] = model_set.ae_and_repaired

    @property
    def versions(self) -> tuple[str, ...]:
        version = self.upstream.config.version
        return (version,) if version else ()

    @property
    def batch_runs(self) -> Mapping[Detector, Callable[[np.ndarray], Any]]:
        return self._runs

    def start(self) -> None:
        self._prober = asyncio.get_running_loop().create_task(self._probe_loop(), name="probe")

    async def stop(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        await self.upstream.close()

    async def _probe_loop(self) -> None:
        while True:
            try:
                await self.upstream.probe()
            except Exception:  # a bug in probing must not stop probing
                logger.exception("upstream probe failed", extra={"model": self.model_set.name})
            await asyncio.sleep(self.probe_interval_s)

    def readiness(self) -> tuple[bool, str]:
        return self.upstream.ready, self.upstream.reason

    async def complete(
        self,
        x: np.ndarray,
        ran: Rows | AeAndRepaired | None,
        call: Call,
        detector: Detector,
    ) -> Detection:
        """[x; the images that AE(x) changed] (at most 2N images; also for
        detrigger_or_repaired, whose repaired graph ran here), for STRIP [x; superimposed
        copies] (N * (n + 1) images), for both [x; AE(x); copies] (N * (n + 2) images), or for
        repaired x alone (the repaired graph ran here), in one upstream request."""
        n = x.shape[0]
        changed = None
        # what ran here: AE(x) or the repaired graph's logits (Rows), or both
        batched, logits_r = (
            (ran.ae, ran.repaired.values) if isinstance(ran, AeAndRepaired) else (ran, None)
        )
        strip = self.model_set.require_strip() if detector is Detector.strip else None
        both = self.model_set.require_both() if detector is Detector.both else None
        if strip is not None:
            # Superimposition is plain numpy (no model): off the event loop, not batched.
            batch = await asyncio.to_thread(strip.batch, x)
        elif detector is Detector.repaired:
            batch = x
        elif both is not None:
            assert batched is not None, "the engine batches the AE of detector both"
            batch = await asyncio.to_thread(both_batch, x, batched.values, both[0])
        else:
            assert batched is not None, "the engine batches the AE of the detrigger detector"
            # The images AE(x) left unchanged are not sent twice (contract/unchanged.py).
            changed = changed_rows(x, batched.values)
            batch = second_pass(x, batched.values, changed).astype(np.float32, copy=False)
        request = InferRequest(
            [InferTensor.from_numpy(self.upstream.input_name(), batch)],
            id=call.request_id,
            parameters=call.parameters,
        )
        classes = len(self.model_set.manifest.classes)
        response, logits = await self.upstream.infer(request, call.headers, classes)
        outputs = response.outputs
        if strip is not None:
            decisions, _ = strip.decide(logits, n)
        elif detector is Detector.repaired:
            spec = self.model_set.manifest.detectors.repaired
            assert batched is not None and spec is not None, "the engine batches the repaired graph"
            decisions = decide(logits, batched.values, spec.decision)
            # The logits output gets rows N..2N-1, the repaired graph's: mode repair's answer.
            chosen = self.upstream.output_name() or outputs[0].name
            outputs = [with_rows(o, batched.values) if o.name == chosen else o for o in outputs]
        elif both is not None:
            logits_x, logits_ae, entropy = both_scores(logits, n, both[0].config.n)
            decisions = decide_both(logits_x, logits_ae, entropy, both[1])
        else:
            assert changed is not None
            # Back to the full pair [x; AE(x)]: an unchanged image's second row is its first.
            pair = pair_rows(changed)
            logits = logits[pair]
            outputs = [o.take_rows(pair) if o.shape[:1] == [len(batch)] else o for o in outputs]
            if logits_r is None:
                decisions = decide(logits[:n], logits[n:], self.model_set.manifest.decision)
            else:
                fused, repaired = self.model_set.require_detrigger_or_repaired()
                decisions, answer = decide_detrigger_or_repaired(
                    logits[:n], logits[n:], logits_r, fused, repaired
                )
                # The logits output gets mode repair's answer as rows N..2N-1; the upstream's
                # other outputs keep their rows on x alone (they have none on the repaired
                # graph).
                chosen = self.upstream.output_name() or outputs[0].name
                outputs = [answer_rows(o, chosen, answer) for o in outputs]
        return Detection(
            decisions,
            outputs,
            response.model_name or self.upstream.config.model,
            response.model_version,
            response.parameters,
            detector,
            None if batched is None or detector is Detector.repaired else batched.values,
        )


def with_rows(tensor: InferTensor, rows: np.ndarray) -> InferTensor:
    """``tensor`` with ``rows`` appended along its first axis, in its own datatype."""
    data = np.concatenate([tensor.data, rows.astype(tensor.data.dtype, copy=False)])
    return InferTensor.from_numpy(tensor.name, data, tensor.parameters)


def answer_rows(tensor: InferTensor, chosen: str, answer: np.ndarray) -> InferTensor:
    """An upstream output of 2N rows on [x; AE(x)] under detector detrigger_or_repaired: the
    logits output ``chosen`` with ``answer`` (N rows) as its rows N..2N-1, any other output cut
    to its N rows on x. Outputs of another length are left as they are."""
    n = len(answer)
    if tensor.shape[:1] != [2 * n]:
        return tensor
    on_x = tensor.take_rows(np.arange(n))
    return with_rows(on_x, answer) if tensor.name == chosen else on_x
