"""A quarantine of flagged inputs, for forensics (docs/service.md "Quarantine"); opt-in.

Each flagged image is kept as it came (its original bytes where the request had them, else
its pixels as PNG), with its de-triggered image (AE(x), as PNG) where the detector ran the AE,
and an index row: time, request id, model set, detector, score, verdict. Never a header or an
API key. The store is a folder with an SQLite index (``folder.py``) or an S3-compatible bucket
(``s3.py``, boto3 imported only when configured); both keep the same files and rows.

Writes never touch the request path: :meth:`Quarantine.submit` puts the item on a bounded
queue and returns; one writer thread drains it (``writer.py``). A full queue, a full disk, a
read-only folder, a missing bucket, an unreachable endpoint or any other write error drops the
item, counts it in ``guard_quarantine_dropped_total`` by reason, and the request is answered as
if nothing happened. After each write the oldest items go until the store is within
GUARD_QUARANTINE_MAX_BYTES and GUARD_QUARANTINE_MAX_AGE_S.
"""

from __future__ import annotations

from service.metrics import QUARANTINE_DROP_REASONS
from service.quarantine.folder import INDEX, FolderStore
from service.quarantine.record import COLUMNS, Flagged, Item, Store, png
from service.quarantine.s3 import S3Store, parse_s3_url
from service.quarantine.writer import Quarantine

DROP_REASONS = QUARANTINE_DROP_REASONS

__all__ = [
    "COLUMNS",
    "DROP_REASONS",
    "INDEX",
    "Flagged",
    "FolderStore",
    "Item",
    "Quarantine",
    "S3Store",
    "Store",
    "parse_s3_url",
    "png",
]
