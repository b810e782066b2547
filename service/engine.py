"""The batching engine of one model set, in front of its backend (service.backends).

Images of concurrent requests are queued together and run as one batch of the backend's batch
function once ``max_batch_size`` images wait or the oldest has waited ``max_batch_wait_ms``.
That runs in a dedicated thread, so the event loop keeps accepting and decoding requests
meanwhile; then the backend completes each request from its rows (:meth:`BatchEngine.detect`).

Each queued item names its detector (``detrigger``, ``strip`` or ``both``): a batch holds the
items of one detector and runs that detector's batch function. The set's queue, its limit and its
inference thread are shared by the detectors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from contract.errors import QueueFull
from contract.modes import Detector
from service import tracing
from service.backends.base import Backend, Call, Detection
from service.metrics import Metrics

logger = logging.getLogger("guard.engine")
# A request of at most this many images that finds the engine idle (dispatch at once: nothing
# queued, no batch running, and no other request queueing in the same turn of the event loop)
# runs its batch on the event loop's thread. Its batch would hold its own images alone anyway;
# the hand-off to the inference thread and back costs two thread wake-ups, each often a whole
# scheduler slice on a busy machine, against about a millisecond of inference, during which
# ONNX Runtime releases the GIL. Larger requests, and STRIP (its batch runs the target on 17
# copies of each image), never hold the event loop that long.
INLINE_MAX_IMAGES = 4


class Batched(Protocol):
    """What a batch function returns: per-image rows that can be sliced and joined again."""

    def slice(self, start: int, stop: int) -> Any: ...

    @staticmethod
    def concat(parts: Sequence[Any]) -> Any: ...


R = TypeVar("R", bound=Batched)


@dataclass
class _Item(Generic[R]):
    x: np.ndarray  # (k, C, H, W), k <= max_batch_size
    future: asyncio.Future[R]
    detector: Detector
    enqueued_at: float = field(default_factory=time.perf_counter)
    # The caller's span (the batch's parent or link) and its wait for a batch, ended by _loop.
    caller: tracing.Span = field(default_factory=tracing.current_span)
    queued: tracing.Span | None = None


class BatchEngine(Generic[R]):
    """Batches the images of concurrent requests into calls of ``backend.batch_runs``."""

    def __init__(
        self,
        name: str,
        backend: Backend,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue_images: int,
        retry_after_s: int,
        metrics: Metrics,
    ) -> None:
        self.name = name
        self.backend = backend
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue_images = max_queue_images
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self._pending: deque[_Item[R]] = deque()
        self._depth = 0  # images in _pending
        self._depth_of: Counter[Detector] = Counter()  # images in _pending, per detector
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"ort-{name}")
        self._task: asyncio.Task[None] | None = None
        self._running = False  # a batch is in the inference thread
        self._inline_claims = 0  # requests deciding whether to run on the loop (submit)

    @property
    def depth(self) -> int:
        return self._depth

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="engine")
        self.backend.start()

    async def stop(self) -> None:
        await self.backend.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for item in self._pending:
            if not item.future.done():
                item.future.cancel()
        self._executor.shutdown(wait=True)

    async def detect(self, x: np.ndarray, call: Call, detector: Detector) -> Detection:
        """(N, C, H, W) images -> their detection: batched where the backend batches the
        detector, then completed by the backend for this request alone."""
        batched = await self.submit(x, detector) if detector in self.backend.batch_runs else None
        return await self.backend.complete(x, batched, call, detector)

    async def submit(self, x: np.ndarray, detector: Detector) -> R:
        """Queue (N, C, H, W) images for ``detector``; returns their rows of the batch
        function's result, in order.

        Raises QueueFull at once, without queueing anything, when the images do not fit.
        """
        if detector not in self.backend.batch_runs:
            raise ValueError(
                f"{self.name!r} batches {list(self.backend.batch_runs)}, not {detector}"
            )
        n = x.shape[0]
        if self._depth + n > self.max_queue_images:
            raise QueueFull(
                f"the engine queue of model {self.name!r} is full "
                f"({self._depth} of {self.max_queue_images} images waiting)",
                accepted=f"retry after {self.retry_after_s} s",
            )
        loop = asyncio.get_running_loop()
        items: list[_Item[R]] = [
            _Item(x[i : i + self.max_batch_size], loop.create_future(), detector)
            for i in range(0, n, self.max_batch_size)
        ]
        for item in items:
            item.queued = tracing.start_span("queue", model=self.name, images=item.x.shape[0])
        if self._idle_for(n, detector):
            self._inline_claims += 1
            try:
                # Requests ready in this turn of the loop come forward first; any of them
                # queues (it finds this claim), and this request then queues to batch with it.
                await asyncio.sleep(0)
            finally:
                self._inline_claims -= 1
            if self._idle_for(n, detector):
                for item in items:
                    self.metrics.observe_stage(
                        "queue", time.perf_counter() - item.enqueued_at, self.name
                    )
                    if item.queued is not None:
                        item.queued.end()
                    item.future.cancel()
                return self._run_inline(x, detector)
        self._pending.extend(items)
        self._depth += n
        self._depth_of[detector] += n
        self.metrics.queue_depth.labels(model=self.name).set(self._depth)
        self._wakeup.set()
        parts = await asyncio.gather(*(item.future for item in items))
        result: R = parts[0] if len(parts) == 1 else type(parts[0]).concat(parts)
        return result

    def _idle_for(self, n: int, detector: Detector) -> bool:
        """Whether ``n`` images may run at once on the event loop (INLINE_MAX_IMAGES)."""
        return (
            self.max_wait_s == 0
            and n <= INLINE_MAX_IMAGES
            and detector is Detector.detrigger
            and not self._pending
            and not self._running
            and self._inline_claims == 0
            and self._task is not None
        )

    def _run_inline(self, x: np.ndarray, detector: Detector) -> R:
        """One request's images as a batch of their own, here and now; counted and traced as
        the inference thread's batches are."""
        span = tracing.batch_span(
            "inference", [tracing.current_span()], model=self.name, detector=detector.value,
            images=x.shape[0], requests=1,
        )  # fmt: skip
        started = time.perf_counter()
        try:
            rows: R = tracing.run_in(tracing.context_of(span), self.backend.batch_runs[detector], x)
        except Exception as exc:
            tracing.fail(span, exc)
            logger.exception("%s inference failed on a batch of %d", detector.value, x.shape[0])
            raise
        finally:
            span.end()
        self.metrics.observe_stage("inference", time.perf_counter() - started, self.name)
        self.metrics.batch_size.labels(model=self.name, detector=detector.value).observe(x.shape[0])
        return rows

    async def _collect(self) -> list[_Item[R]]:
        """Wait for a first item, then for a full batch of its detector or the first item's
        deadline; take that detector's items in queue order while they fit."""
        while not self._pending:
            self._wakeup.clear()
            await self._wakeup.wait()
        head = self._pending[0]
        deadline = head.enqueued_at + self.max_wait_s
        while self._depth_of[head.detector] < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):  # distinct from TimeoutError on 3.10
                await asyncio.wait_for(self._wakeup.wait(), remaining)
        batch: list[_Item[R]] = []
        rest: deque[_Item[R]] = deque()
        size = 0
        full = False  # once an item does not fit, later ones wait too (queue order)
        for item in self._pending:
            if item.detector != head.detector or full:
                rest.append(item)
            elif size + item.x.shape[0] <= self.max_batch_size:
                batch.append(item)
                size += item.x.shape[0]
            else:
                full = True
                rest.append(item)
        self._pending = rest
        self._depth -= size
        self._depth_of[head.detector] -= size
        self.metrics.queue_depth.labels(model=self.name).set(self._depth)
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            started = time.perf_counter()
            for item in batch:
                self.metrics.observe_stage("queue", started - item.enqueued_at, self.name)
                if item.queued is not None:
                    item.queued.end()
            live = [item for item in batch if not item.future.done()]  # skip cancelled callers
            if not live:
                continue
            x = live[0].x if len(live) == 1 else np.concatenate([item.x for item in live])
            detector = live[0].detector
            # One span for the batch: a child of its first caller, linked to the others.
            span = tracing.batch_span(
                "inference",
                [item.caller for item in live],
                model=self.name,
                detector=detector.value,
                images=x.shape[0],
                requests=len(live),
            )
            self._running = True
            try:
                rows = await loop.run_in_executor(
                    self._executor,
                    tracing.run_in,
                    tracing.context_of(span),
                    self.backend.batch_runs[detector],
                    x,
                )
            except Exception as exc:  # a bug or a broken graph: fail these callers, keep going
                tracing.fail(span, exc)
                span.end()
                logger.exception("%s inference failed on a batch of %d", detector.value, x.shape[0])
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            finally:
                self._running = False
            span.end()
            self.metrics.observe_stage("inference", time.perf_counter() - started, self.name)
            self.metrics.batch_size.labels(model=self.name, detector=detector.value).observe(
                x.shape[0]
            )
            offset = 0
            for item in live:
                k = item.x.shape[0]
                if not item.future.done():
                    item.future.set_result(rows.slice(offset, offset + k))
                offset += k
