"""The default store: a folder of image files with an SQLite index (``index.sqlite``)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from service.quarantine.record import COLUMNS, Item

INDEX = "index.sqlite"
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


class FolderStore:
    """Files in ``folder``, one row each in its SQLite index; the files are written first and
    removed again when the row cannot be written, so that no file is left without its row."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # the writer and the listing share one connection

    def __repr__(self) -> str:
        return f"FolderStore({str(self.folder)!r})"

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.folder / INDEX, check_same_thread=False, timeout=5.0)
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def put(self, item: Item) -> None:
        with self._lock:
            db = self._connect()
            written: list[Path] = []
            try:
                for name, data in item.files:
                    path = self.folder / name
                    written.append(path)
                    path.write_bytes(data)
                with db:
                    db.execute(
                        f"INSERT INTO items ({', '.join(COLUMNS)}) VALUES "
                        f"({', '.join('?' * len(COLUMNS))})",
                        [item.row[c] for c in COLUMNS],
                    )
            except BaseException:
                for path in written:  # no file without its row
                    path.unlink(missing_ok=True)
                raise

    def evict(self, now: float, max_age_s: float, max_bytes: int) -> tuple[int, int]:
        """Oldest first, until within the age and size bounds."""
        with self._lock:
            db = self._connect()
            with db:
                old = db.execute(
                    "SELECT id, image_file, detriggered_file FROM items WHERE time < ?",
                    (now - max_age_s,),
                ).fetchall()
                self._remove(db, old)
                total = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM items").fetchone()[0]
                while total > max_bytes:
                    rows = db.execute(
                        "SELECT id, image_file, detriggered_file, bytes FROM items "
                        "ORDER BY time, rowid LIMIT 64"
                    ).fetchall()
                    if not rows:
                        break
                    for row in rows:
                        if total <= max_bytes:
                            break
                        self._remove(db, [row[:3]])
                        total -= row[3]
                count, size = db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM items"
                ).fetchone()
        return int(count), int(size)

    def _remove(self, db: sqlite3.Connection, rows: list[Any]) -> None:
        for item_id, image_file, detriggered_file in rows:
            for name in (image_file, detriggered_file):
                if name:
                    (self.folder / name).unlink(missing_ok=True)
            db.execute("DELETE FROM items WHERE id = ?", (item_id,))

    def list(self, limit: int, model: str | None) -> list[dict[str, Any]]:
        with self._lock:
            try:
                db = self._connect()
            except (OSError, sqlite3.Error):
                return []  # nothing was ever written (the writer counts why)
            where, args = ("WHERE model = ?", [model]) if model else ("", [])
            rows = db.execute(
                f"SELECT {', '.join(COLUMNS)} FROM items {where} ORDER BY time DESC, rowid DESC "
                "LIMIT ?",
                [*args, limit],
            ).fetchall()
        return [dict(zip(COLUMNS, row, strict=True)) for row in rows]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
