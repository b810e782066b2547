"""The S3-compatible store: the same files as the folder store, and each item's index row as
``<id>.json`` beside them, under one bucket and prefix.

boto3 is the ``s3`` extra, imported only when GUARD_QUARANTINE_S3_URL is set. Credentials come
from boto3's standard chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE and its
config files, a web identity token, an instance or pod role): the guard never reads, keeps or
logs them, and no setting holds one.

An item id starts with its time in milliseconds, so that a listing, which S3 returns in key
order, is oldest first. The store keeps an index of its prefix in memory (id -> keys, bytes),
made from a full listing on first use and again every ``resync_s`` (to see items that other
replicas wrote or an operator deleted); in between it adds what it writes and drops what it
evicts. Objects under the prefix whose names are not item ids are never touched.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from contract.errors import QuarantineUnavailable
from service.quarantine.record import ID_PATTERN, Item, time_of
from service.settings import parse_s3_url

RECORD = ".json"
CONTENT_TYPES = {
    ".png": "image/png",
    ".bin": "application/octet-stream",
    RECORD: "application/json",
}


@dataclass
class _Entry:
    keys: list[str] = field(default_factory=list)
    bytes: int = 0
    has_record: bool = False


class S3Store:
    """Items in ``s3://bucket/prefix``, through one boto3 client (thread-safe, pooled)."""

    def __init__(
        self,
        url: str,
        endpoint_url: str | None = None,
        region: str | None = None,
        *,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 10.0,
        resync_s: float = 60.0,
    ) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:  # the s3 extra is not installed
            raise RuntimeError(
                "GUARD_QUARANTINE_S3_URL needs boto3: pip install 'detrigger-guard[s3]'"
            ) from exc
        self.bucket, self.prefix = parse_s3_url(url)
        self.endpoint_url = endpoint_url
        config = Config(
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            # Few retries: the writer is one thread, and a slow store only fills its queue.
            retries={"max_attempts": 2, "mode": "standard"},
            # A custom endpoint (MinIO, Ceph, moto, ...) is addressed by path, as they expect.
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )
        self._errors: tuple[type[BaseException], ...] = _botocore_errors()
        self.resync_s = resync_s
        self._index: OrderedDict[str, _Entry] | None = None  # id -> entry, oldest first
        self._records: dict[str, dict[str, Any]] = {}  # rows read back, for the listing
        self._synced_at = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"S3Store('s3://{self.bucket}/{self.prefix}'{where})"

    # --- the index of the prefix ----------------------------------------------------------
    def _sync(self, force: bool = False) -> OrderedDict[str, _Entry]:
        """The index, listed again when it is older than ``resync_s`` (call with the lock)."""
        now = time.monotonic()
        if self._index is not None and not force and now - self._synced_at < self.resync_s:
            return self._index
        index: dict[str, _Entry] = {}
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        for page in pages:
            for obj in page.get("Contents", []):
                name = obj["Key"][len(self.prefix) :]
                item_id, dot, _ = name.partition(".")
                if "/" in name or not dot or not ID_PATTERN.match(item_id):
                    continue  # not ours
                entry = index.setdefault(item_id, _Entry())
                entry.keys.append(obj["Key"])
                entry.bytes += int(obj["Size"])
                entry.has_record |= name == item_id + RECORD
        self._index = OrderedDict(sorted(index.items()))
        self._records = {k: v for k, v in self._records.items() if k in self._index}
        self._synced_at = now
        return self._index

    # --- the store ------------------------------------------------------------------------
    def put(self, item: Item) -> None:
        record = json.dumps(item.row, separators=(",", ":")).encode()
        # The row goes last: an item is listed only once all its files are there.
        objects = [*item.files, (item.id + RECORD, record)]
        written: list[str] = []
        try:
            for name, data in objects:
                key = self.prefix + name
                self._client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=data,
                    ContentType=CONTENT_TYPES.get(name[name.rfind(".") :], "binary/octet-stream"),
                )
                written.append(key)
        except BaseException:
            self._delete(written, check=False)  # no file without its row
            raise
        with self._lock:
            if self._index is not None:
                self._index[item.id] = _Entry(
                    keys=written, bytes=sum(len(d) for _, d in objects), has_record=True
                )
                self._records[item.id] = dict(item.row)

    def evict(self, now: float, max_age_s: float, max_bytes: int) -> tuple[int, int]:
        with self._lock:
            index = self._sync()
            total = sum(e.bytes for e in index.values())
            doomed: list[str] = []
            for item_id, entry in index.items():  # oldest first
                made = time_of(item_id) or 0.0
                if made >= now - max_age_s and total <= max_bytes:
                    break
                doomed.append(item_id)
                total -= entry.bytes
            keys = [key for item_id in doomed for key in index[item_id].keys]
            self._delete(keys, check=True)
            for item_id in doomed:
                del index[item_id]
                self._records.pop(item_id, None)
            return len(index), total

    def _delete(self, keys: list[str], check: bool) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1000 keys a call
            chunk = keys[start : start + 1000]
            try:
                answer = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
                )
            except Exception:
                if check:
                    raise
                continue
            if check and answer.get("Errors"):
                first = answer["Errors"][0]
                raise RuntimeError(
                    f"S3 refused to delete {len(answer['Errors'])} object(s), e.g. "
                    f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}"
                )

    def list(self, limit: int, model: str | None) -> list[dict[str, Any]]:
        try:
            with self._lock:
                ids = [i for i, e in reversed(self._sync().items()) if e.has_record]
            rows: list[dict[str, Any]] = []
            for item_id in ids:  # newest first; rows read once, then kept with the index
                row = self._records.get(item_id)
                if row is None:
                    row = self._read_record(item_id)
                    if row is None:
                        continue  # evicted meanwhile
                    with self._lock:
                        self._records[item_id] = row
                if model is None or row.get("model") == model:
                    rows.append(row)
                    if len(rows) >= limit:
                        break
            return rows
        except self._errors as exc:
            raise QuarantineUnavailable(
                f"the quarantine's bucket {self.bucket!r} could not be listed: {exc}"
            ) from exc

    def _read_record(self, item_id: str) -> dict[str, Any] | None:
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=self.prefix + item_id + RECORD)
        except self._client.exceptions.NoSuchKey:
            return None
        row = json.loads(body["Body"].read())
        return row if isinstance(row, dict) else None

    def close(self) -> None:
        self._client.close()


def _botocore_errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, ValueError)
