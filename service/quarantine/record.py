"""What the quarantine keeps of one flagged image, the same in every store: its files and its
index row. A store (``folder.py``, ``s3.py``) only puts, evicts and lists them."""

from __future__ import annotations

import io
import re
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

COLUMNS = (
    "id", "time", "request_id", "model", "detector", "mode", "score", "score_name", "threshold",
    "decision_rule", "predicted", "detriggered", "image_file", "detriggered_file", "bytes",
)  # fmt: skip
# An item's id starts with its time in milliseconds, zero-padded, so that ids sort oldest
# first: an S3 listing (in key order) is then in age order without reading any object.
ID_PATTERN = re.compile(r"^(\d{13})-[0-9a-f]{16}$")


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


@dataclass(frozen=True)
class Item:
    """One flagged image as stored: its files (name -> bytes, names relative to the store)
    and its index row (``COLUMNS``); never a header or an API key."""

    row: dict[str, Any]
    files: list[tuple[str, bytes]]

    @property
    def id(self) -> str:
        return str(self.row["id"])


class Store(Protocol):
    """Where items are kept. Called from the quarantine's one writer thread (put, evict) and
    from the listing route's thread pool (list); an implementation locks what they share."""

    def put(self, item: Item) -> None:
        """Keep the item whole or raise, leaving none of its files behind."""

    def evict(self, now: float, max_age_s: float, max_bytes: int) -> tuple[int, int]:
        """Remove the oldest items until none is older than ``max_age_s`` and the store holds
        at most ``max_bytes``; answer the items and bytes left."""
        ...

    def list(self, limit: int, model: str | None) -> list[dict[str, Any]]:
        """The newest rows first (no image bytes)."""
        ...

    def close(self) -> None: ...


def new_id(when: float) -> str:
    return f"{int(when * 1000):013d}-{uuid.uuid4().hex[:16]}"


def time_of(item_id: str) -> float | None:
    """The time an id was made at, or None for a name that is not an item id."""
    match = ID_PATTERN.match(item_id)
    return None if match is None else int(match.group(1)) / 1000.0


def png(pixels: np.ndarray) -> bytes:
    """(C, H, W) float32 in [0, 1] -> PNG bytes (gray for C = 1, RGB for C = 3)."""
    hwc = np.clip(np.rint(np.moveaxis(pixels, 0, -1) * 255.0), 0, 255).astype(np.uint8)
    image = Image.fromarray(hwc[..., 0] if hwc.shape[-1] == 1 else hwc)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def item_of(flagged: Flagged, when: float) -> Item:
    """The files and the row of one flagged image, made at ``when``."""
    item_id = new_id(when)
    image = flagged.original if flagged.original is not None else png(flagged.pixels)
    image_file = f"{item_id}.{'bin' if flagged.original is not None else 'png'}"
    files = [(image_file, image)]
    detriggered_file = None
    if flagged.detriggered_pixels is not None:
        detriggered_file = f"{item_id}.detriggered.png"
        files.append((detriggered_file, png(flagged.detriggered_pixels)))
    row = {
        "id": item_id,
        "time": when,
        "request_id": flagged.request_id,
        "model": flagged.model,
        "detector": flagged.detector,
        "mode": flagged.mode,
        "score": float(flagged.score),
        "score_name": flagged.score_name,
        "threshold": float(flagged.threshold),
        "decision_rule": flagged.decision_rule,
        "predicted": int(flagged.predicted),
        "detriggered": flagged.detriggered,
        "image_file": image_file,
        "detriggered_file": detriggered_file,
        "bytes": sum(len(data) for _, data in files),
    }
    return Item(row=row, files=files)
