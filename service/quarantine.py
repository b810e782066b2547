"""A quarantine of flagged inputs, for forensics (docs/service.md "Quarantine"); opt-in.

Each flagged image is kept as it came (its original bytes where the request had them, else
its pixels as PNG), with its de-triggered image (AE(x), as PNG) where the detector ran the AE,
and a row in an SQLite index: time, request id, model set, detector, score, verdict. Never a
header or an API key.

Writes never touch the request path: :meth:`Quarantine.submit` puts the item on a bounded
queue and returns; one writer thread drains it. A full queue, a full disk, a read-only folder
or any other write error drops the item, counts it in ``guard_quarantine_dropped_total`` by
reason, and the request is answered as if nothing happened. After each write the oldest items
go until the folder is within GUARD_QUARANTINE_MAX_BYTES and GUARD_QUARANTINE_MAX_AGE_S.
"""

from __future__ import annotations

import contextlib
import io
import logging
import queue
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from service.metrics import QUARANTINE_DROP_REASONS, Metrics

logger = logging.getLogger("guard.quarantine")
INDEX = "index.sqlite"
DROP_REASONS = QUARANTINE_DROP_REASONS
_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    time REAL NOT NULL,
    request_id TEXT,
    model TEXT NOT NULL,
    detector TEXT NOT NULL,
    mode TEXT NOT NULL,
    score REAL NOT NULL,
    score_name TEXT NOT NULL,
    threshold REAL NOT NULL,
    decision_rule TEXT NOT NULL,
    predicted INTEGER NOT NULL,
    detriggered INTEGER,
    image_file TEXT NOT NULL,
    detriggered_file TEXT,
    bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS items_time ON items (time);
"""
COLUMNS = (
    "id", "time", "request_id", "model", "detector", "mode", "score", "score_name", "threshold",
    "decision_rule", "predicted", "detriggered", "image_file", "detriggered_file", "bytes",
)  # fmt: skip


@dataclass(frozen=True)
class Flagged:
    """One flagged image and its verdict. ``original`` is the image as uploaded, or None when
    the request sent pixels (a V2 tensor); ``pixels`` (C, H, W) float32 in [0, 1] is then kept."""

    request_id: str | None
    model: str
    detector: str
    mode: str
    score: float
    score_name: str
    threshold: float
    decision_rule: str
    predicted: int
    detriggered: int | None
    original: bytes | None
    pixels: np.ndarray
    detriggered_pixels: np.ndarray | None  # (C, H, W) AE(x), None for STRIP
    time: float = 0.0


def png(pixels: np.ndarray) -> bytes:
    """(C, H, W) float32 in [0, 1] -> PNG bytes (gray for C = 1, RGB for C = 3)."""
    hwc = np.clip(np.rint(np.moveaxis(pixels, 0, -1) * 255.0), 0, 255).astype(np.uint8)
    image = Image.fromarray(hwc[..., 0] if hwc.shape[-1] == 1 else hwc)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


class Quarantine:
    """A folder of flagged inputs with an SQLite index, written by one thread."""

    def __init__(
        self,
        folder: Path,
        metrics: Metrics,
        max_bytes: int,
        max_age_s: float,
        queue_size: int = 256,
    ) -> None:
        self.folder = folder
        self.metrics = metrics
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._queue: queue.Queue[Flagged | None] = queue.Queue(queue_size)
        self._thread = threading.Thread(target=self._run, name="quarantine", daemon=True)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # the writer and the listing share one connection
        self._last_error_log = 0.0

    # --- the request side: never blocks ---------------------------------------------------
    def submit(self, item: Flagged) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._drop("queue_full")

    def _drop(self, reason: str, exc: BaseException | None = None) -> None:
        self.metrics.quarantine_dropped.labels(reason=reason).inc()
        now = time.monotonic()
        if now - self._last_error_log > 60.0:  # at most one line a minute, not one per image
            self._last_error_log = now
            logger.warning(
                "quarantine dropped an item",
                extra={"reason": reason, "error": None if exc is None else repr(exc)},
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
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def join(self) -> None:
        """Until every item submitted so far is written or dropped (tests, shutdown)."""
        self._queue.join()

    # --- the writer thread ----------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.folder / INDEX, check_same_thread=False, timeout=5.0)
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._write(item)
            except Exception as exc:  # full disk, read-only folder, locked index, a bug
                self._drop("write_error", exc)
            finally:
                self._queue.task_done()

    def _write(self, item: Flagged) -> None:
        item_id = uuid.uuid4().hex
        when = item.time or time.time()
        image = item.original if item.original is not None else png(item.pixels)
        image_file = f"{item_id}.{'bin' if item.original is not None else 'png'}"
        files = [(image_file, image)]
        detriggered_file = None
        if item.detriggered_pixels is not None:
            detriggered_file = f"{item_id}.detriggered.png"
            files.append((detriggered_file, png(item.detriggered_pixels)))
        size = sum(len(data) for _, data in files)
        with self._lock:
            db = self._connect()
            written: list[Path] = []
            try:
                for name, data in files:
                    path = self.folder / name
                    written.append(path)
                    path.write_bytes(data)
                with db:
                    db.execute(
                        f"INSERT INTO items ({', '.join(COLUMNS)}) VALUES "
                        f"({', '.join('?' * len(COLUMNS))})",
                        (
                            item_id,
                            when,
                            item.request_id,
                            item.model,
                            item.detector,
                            item.mode,
                            float(item.score),
                            item.score_name,
                            float(item.threshold),
                            item.decision_rule,
                            int(item.predicted),
                            item.detriggered,
                            image_file,
                            detriggered_file,
                            size,
                        ),  # fmt: skip
                    )
            except BaseException:
                for path in written:  # no file without its row
                    path.unlink(missing_ok=True)
                raise
            self._evict(db, time.time())
        self.metrics.quarantine_written.labels(model=item.model).inc()

    def _evict(self, db: sqlite3.Connection, now: float) -> None:
        """Oldest first, until within the age and size bounds."""
        with db:
            old = db.execute(
                "SELECT id, image_file, detriggered_file FROM items WHERE time < ?",
                (now - self.max_age_s,),
            ).fetchall()
            self._remove(db, old)
            total = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM items").fetchone()[0]
            while total > self.max_bytes:
                rows = db.execute(
                    "SELECT id, image_file, detriggered_file, bytes FROM items "
                    "ORDER BY time, rowid LIMIT 64"
                ).fetchall()
                if not rows:
                    break
                for row in rows:
                    if total <= self.max_bytes:
                        break
                    self._remove(db, [row[:3]])
                    total -= row[3]
            count, size = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM items"
            ).fetchone()
        self.metrics.quarantine_items.set(count)
        self.metrics.quarantine_bytes.set(size)

    def _remove(self, db: sqlite3.Connection, rows: list[Any]) -> None:
        for item_id, image_file, detriggered_file in rows:
            for name in (image_file, detriggered_file):
                if name:
                    (self.folder / name).unlink(missing_ok=True)
            db.execute("DELETE FROM items WHERE id = ?", (item_id,))

    # --- the listing ----------------------------------------------------------------------
    def list(self, limit: int = 100, model: str | None = None) -> list[dict[str, Any]]:
        """The newest items first, as index rows (no image bytes)."""
        with self._lock:
            try:
                db = self._connect()
            except (OSError, sqlite3.Error):
                return []
            where, args = ("WHERE model = ?", [model]) if model else ("", [])
            rows = db.execute(
                f"SELECT {', '.join(COLUMNS)} FROM items {where} ORDER BY time DESC, rowid DESC "
                "LIMIT ?",
                [*args, limit],
            ).fetchall()
        return [dict(zip(COLUMNS, row, strict=True)) for row in rows]
