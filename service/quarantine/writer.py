"""The quarantine's writer: a bounded queue that the request path only puts on, and one thread
that hands each item to the store, then evicts the oldest to stay within the bounds."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

from service.metrics import Metrics
from service.quarantine.folder import FolderStore
from service.quarantine.record import Flagged, Store, item_of

logger = logging.getLogger("guard.quarantine")


class Quarantine:
    """Flagged images kept in a store (a folder by default), written by one thread."""

    def __init__(
        self,
        store: Store | Path,
        metrics: Metrics,
        max_bytes: int,
        max_age_s: float,
        queue_size: int = 256,
    ) -> None:
        self.store: Store = FolderStore(store) if isinstance(store, Path) else store
        self.metrics = metrics
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._queue: queue.Queue[Flagged | None] = queue.Queue(queue_size)
        self._thread = threading.Thread(target=self._run, name="quarantine", daemon=True)
        self._last_log: dict[str, float] = {}

    # --- the request side: never blocks ---------------------------------------------------
    def submit(self, item: Flagged) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._drop("queue_full")

    def _drop(self, reason: str, exc: BaseException | None = None) -> None:
        self.metrics.quarantine_dropped.labels(reason=reason).inc()
        self._warn("quarantine dropped an item", reason, exc)

    def _warn(self, message: str, reason: str, exc: BaseException | None) -> None:
        now = time.monotonic()
        if now - self._last_log.get(message, 0.0) > 60.0:  # one line a minute, not one an image
            self._last_log[message] = now
            logger.warning(
                message,
                extra={
                    "reason": reason,
                    "store": repr(self.store),
                    "error": None if exc is None else repr(exc),
                },
            )

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued (within ``timeout``), then stop the writer."""
        if self._thread.is_alive():
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=timeout)
            self._thread.join(timeout)
        self.store.close()

    def join(self) -> None:
        """Until every item submitted so far is written or dropped (tests, shutdown)."""
        self._queue.join()

    # --- the writer thread ----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            flagged = self._queue.get()
            try:
                if flagged is None:
                    return
                self._write(flagged)
            finally:
                self._queue.task_done()

    def _write(self, flagged: Flagged) -> None:
        try:
            item = item_of(flagged, flagged.time or time.time())
            self.store.put(item)
        except Exception as exc:  # full disk, read-only folder, missing bucket, a bug
            self._drop("write_error", exc)
            return
        self.metrics.quarantine_written.labels(model=flagged.model).inc()
        try:
            count, size = self.store.evict(time.time(), self.max_age_s, self.max_bytes)
        except Exception as exc:  # the item is kept; the next write evicts again
            self._warn("quarantine could not evict", "evict_error", exc)
            return
        self.metrics.quarantine_items.set(count)
        self.metrics.quarantine_bytes.set(size)

    # --- the listing ----------------------------------------------------------------------
    def list(self, limit: int = 100, model: str | None = None) -> list[dict[str, Any]]:
        """The newest items first, as index rows (no image bytes)."""
        return self.store.list(limit, model)
