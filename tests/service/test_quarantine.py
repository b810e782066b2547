"""The quarantine of flagged inputs: what it keeps, that it never holds up or fails a request
(full disk, unwritable folder, a writer that falls behind), concurrent writers, eviction by
size and age, and GET /v1/quarantine behind the API key."""

from __future__ import annotations

import asyncio
import errno
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.main import create_app
from service.metrics import Metrics
from service.quarantine import INDEX, Flagged, Quarantine, Store, png
from service.settings import Settings
from tests.support.tiny_models import TinySpec, add_trigger, clean_image, png_bytes

SPEC = TinySpec()
KEY = "quarantine-test-key-5d1f"


def flagged(i: int = 0, when: float = 0.0, model: str = "tiny", size: int = 100) -> Flagged:
    rng = np.random.default_rng(i)
    return Flagged(
        request_id=f"req-{i}",
        model=model,
        detector="detrigger",
        mode="flag",
        score=0.9,
        score_name="prob_drop",
        threshold=0.5,
        decision_rule="score",
        predicted=0,
        detriggered=5,
        original=bytes(rng.integers(0, 256, size, dtype=np.uint8)),
        pixels=rng.random((1, 28, 28), dtype=np.float32),
        detriggered_pixels=rng.random((1, 28, 28), dtype=np.float32),
        time=when or time.time(),
    )


def dropped(metrics: Metrics, reason: str) -> float:
    return metrics.quarantine_dropped.labels(reason=reason)._value.get()


def written(metrics: Metrics, model: str = "tiny") -> float:
    return metrics.quarantine_written.labels(model=model)._value.get()


def run(store: Path | Store, metrics: Metrics, items: list[Flagged], **kw) -> Quarantine:
    q = Quarantine(store, metrics, kw.pop("max_bytes", 10**9), kw.pop("max_age_s", 3600.0), **kw)
    q.start()
    for item in items:
        q.submit(item)
    q.join()
    return q


def test_keeps_the_image_its_detriggered_copy_and_the_verdict(tmp_path: Path) -> None:
    metrics = Metrics()
    items = [flagged(i, when=1000.0 + i) for i in range(3)]
    q = run(tmp_path / "q", metrics, items, max_age_s=1e12)
    rows = q.list()
    assert [r["request_id"] for r in rows] == ["req-2", "req-1", "req-0"]  # newest first
    first = rows[-1]
    assert (tmp_path / "q" / first["image_file"]).read_bytes() == items[0].original
    assert (tmp_path / "q" / first["detriggered_file"]).read_bytes() == png(
        items[0].detriggered_pixels
    )
    assert (first["model"], first["score"], first["predicted"], first["detriggered"]) == (
        "tiny", 0.9, 0, 5,
    )  # fmt: skip
    assert written(metrics) == 3 and metrics.quarantine_items._value.get() == 3
    assert q.list(model="other") == []
    q.stop()


def test_evicts_the_oldest_to_stay_within_the_size_bound(tmp_path: Path) -> None:
    metrics = Metrics()
    sample = flagged(0)  # the image as uploaded, and AE(x) as PNG; about the same each
    one = len(sample.original) + len(png(sample.detriggered_pixels))
    q = run(tmp_path, metrics, [flagged(i, when=1000.0 + i) for i in range(10)],
            max_bytes=int(3.5 * one), max_age_s=1e12)  # fmt: skip
    kept = q.list()
    assert len(kept) == 3 and [r["request_id"] for r in kept] == ["req-9", "req-8", "req-7"]
    assert sum(r["bytes"] for r in kept) <= 3.5 * one
    files = {p.name for p in tmp_path.iterdir()} - {INDEX}
    assert files == {r[k] for r in kept for k in ("image_file", "detriggered_file")}
    assert metrics.quarantine_bytes._value.get() == sum(r["bytes"] for r in kept)
    q.stop()


def test_evicts_items_older_than_the_age_bound(tmp_path: Path) -> None:
    now = time.time()
    q = run(tmp_path, Metrics(), [flagged(0, when=now - 7200), flagged(1, when=now)],
            max_age_s=3600.0)  # fmt: skip
    assert [r["request_id"] for r in q.list()] == ["req-1"]
    q.stop()


def test_a_full_disk_drops_and_counts_and_leaves_no_half_item(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = Metrics()
    real = Path.write_bytes
    calls = {"n": 0}

    def second_write_fails(self: Path, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] % 2 == 0:  # the de-triggered copy does not fit
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", second_write_fails)
    q = run(tmp_path, metrics, [flagged(0), flagged(1)])
    assert dropped(metrics, "write_error") == 2 and written(metrics) == 0
    assert q.list() == []
    assert {p.name for p in tmp_path.iterdir()} == {INDEX}  # the image written first is gone
    q.stop()


def test_an_unwritable_folder_drops_and_counts(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")
    metrics = Metrics()
    q = run(blocker / "q", metrics, [flagged(0), flagged(1)])
    assert dropped(metrics, "write_error") == 2
    assert q.list() == []
    q.stop()


def test_submit_never_waits_for_the_writer(tmp_path: Path) -> None:
    """The writer is not running (as when it falls behind): the queue fills, the rest drop."""
    metrics = Metrics()
    q = Quarantine(tmp_path, metrics, 10**9, 3600.0, queue_size=2)
    started = time.perf_counter()
    for i in range(5):
        q.submit(flagged(i))
    assert time.perf_counter() - started < 0.5
    assert dropped(metrics, "queue_full") == 3


def test_concurrent_writers(tmp_path: Path) -> None:
    metrics = Metrics()
    q = Quarantine(tmp_path, metrics, 10**9, 3600.0, queue_size=10_000)
    q.start()
    threads = [
        threading.Thread(target=lambda t=t: [q.submit(flagged(100 * t + i)) for i in range(25)])
        for t in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    q.join()
    rows = q.list(limit=1000)
    assert len(rows) == 200 and len({r["request_id"] for r in rows}) == 200
    assert written(metrics) == 200
    with sqlite3.connect(tmp_path / INDEX) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    q.stop()


# --- through the app ------------------------------------------------------------------------
def serve_and_classify(settings: Settings, then: list[tuple[str, dict]]) -> list[httpx.Response]:
    """POST /classify one clean and one triggered image, wait for the quarantine's writer,
    then GET each (path, headers) of ``then``."""
    images = [clean_image(SPEC, 3), add_trigger(clean_image(SPEC, 5))]
    files = [("images", (f"{i}.png", png_bytes(x), "image/png")) for i, x in enumerate(images)]

    async def go() -> list[httpx.Response]:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            await app.state.repository.wait_loaded()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://guard") as client:
                headers = {"x-api-key": KEY, "x-tenant": "secret-tenant"}
                out = [await client.post("/classify", files=files, headers=headers)]
                if app.state.guard.quarantine is not None:
                    app.state.guard.quarantine.join()
                for path, h in then:
                    out.append(await client.get(path, headers=h))
                return out

    return asyncio.run(go())


def test_flagged_images_land_in_the_quarantine_and_are_listed(
    tiny_set: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "quarantine"
    settings = Settings(models=[tiny_set], quarantine_dir=folder, api_keys=[KEY])
    classified, listed, refused = serve_and_classify(
        settings, [("/v1/quarantine", {"x-api-key": KEY}), ("/v1/quarantine", {})]
    )
    assert classified.status_code == 200 and classified.json()["flagged"] == 1
    assert refused.status_code == 401
    body = listed.json()
    assert body["enabled"] is True
    (item,) = body["items"]
    assert (item["model"], item["detector"], item["predicted"]) == ("tiny", "detrigger", 0)
    assert item["request_id"] == classified.headers["x-request-id"]
    uploaded = png_bytes(add_trigger(clean_image(SPEC, 5)))
    assert (folder / item["image_file"]).read_bytes() == uploaded  # the original bytes
    assert (folder / item["detriggered_file"]).read_bytes()[:4] == b"\x89PNG"
    # No header value is stored: neither the API key nor any other header.
    for path in folder.iterdir():
        data = path.read_bytes()
        assert KEY.encode() not in data and b"secret-tenant" not in data, path.name


def test_with_the_quarantine_disk_full_the_service_keeps_answering(
    tiny_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: Path, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    settings = Settings(models=[tiny_set], quarantine_dir=tmp_path, api_keys=[KEY])
    classified, metrics = serve_and_classify(settings, [("/metrics", {})])
    assert classified.status_code == 200 and classified.json()["flagged"] == 1
    assert 'guard_quarantine_dropped_total{reason="write_error"} 1.0' in metrics.text


def test_off_by_default(tiny_set: Path) -> None:
    assert Settings().quarantine_dir is None
    _, listed = serve_and_classify(
        Settings(models=[tiny_set], api_keys=[KEY]), [("/v1/quarantine", {"x-api-key": KEY})]
    )
    assert listed.json() == {"enabled": False, "items": []}
