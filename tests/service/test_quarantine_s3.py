"""The quarantine in an S3-compatible bucket, against a real S3 server (moto's standalone
server in its own process, over HTTP): the same files and rows as the folder, eviction by size
and age from the bucket's listing, other writers' items, and a missing bucket or an unreachable
endpoint dropping and counting while the service keeps answering."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from contract.errors import QuarantineUnavailable
from service.metrics import Metrics
from service.quarantine import COLUMNS, Quarantine, S3Store, png
from service.settings import Settings
from tests.service.test_quarantine import (
    KEY,
    dropped,
    flagged,
    run,
    serve_and_classify,
    written,
)
from tests.support.s3 import CREDENTIALS, S3Server, moto_server
from tests.support.tiny_models import TinySpec, add_trigger, clean_image, png_bytes

pytestmark = pytest.mark.slow
SPEC = TinySpec()


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    with moto_server() as server:
        yield server


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials from the environment only: no profile of this machine's is read."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def bucket(s3_server: S3Server, request: pytest.FixtureRequest) -> str:
    name = "q-" + request.node.name.lower().replace("_", "-")[:50].strip("-")
    client(s3_server).create_bucket(Bucket=name)
    return name


def client(server: S3Server):  # noqa: ANN201 (boto3's client is typed at run time)
    return boto3.client("s3", endpoint_url=server.endpoint_url)


def keys(server: S3Server, bucket: str, prefix: str = "") -> dict[str, bytes]:
    s3 = client(server)
    found = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in found}


def store(server: S3Server, url: str, **kw) -> S3Store:
    return S3Store(url, server.endpoint_url, **kw)


def test_keeps_the_same_files_and_rows_as_the_folder(s3_server: S3Server, bucket: str) -> None:
    metrics = Metrics()
    items = [flagged(i, when=1000.0 + i) for i in range(3)]
    q = run(store(s3_server, f"s3://{bucket}/guard/q"), metrics, items, max_age_s=1e12)
    rows = q.list()
    assert [r["request_id"] for r in rows] == ["req-2", "req-1", "req-0"]  # newest first
    assert all(tuple(r) == COLUMNS for r in rows)  # the folder's row shape
    objects = keys(s3_server, bucket)
    first = rows[-1]
    assert objects[f"guard/q/{first['image_file']}"] == items[0].original
    assert objects[f"guard/q/{first['detriggered_file']}"] == png(items[0].detriggered_pixels)
    assert json.loads(objects[f"guard/q/{first['id']}.json"]) == first
    assert (first["model"], first["score"], first["predicted"], first["detriggered"]) == (
        "tiny", 0.9, 0, 5,
    )  # fmt: skip
    assert written(metrics) == 3 and metrics.quarantine_items._value.get() == 3
    assert metrics.quarantine_bytes._value.get() == sum(len(v) for v in objects.values())
    assert q.list(model="other") == [] and len(q.list(limit=2)) == 2
    q.stop()


def test_evicts_the_oldest_to_stay_within_the_size_bound(s3_server: S3Server, bucket: str) -> None:
    metrics = Metrics()
    q = run(store(s3_server, f"s3://{bucket}"), metrics, [flagged(0, when=1000.0)],
            max_age_s=1e12)  # fmt: skip
    one = sum(len(v) for v in keys(s3_server, bucket).values())  # files and row of one item
    q.stop()
    q = run(store(s3_server, f"s3://{bucket}"), metrics,
            [flagged(i, when=1000.0 + i) for i in range(1, 10)],
            max_bytes=int(3.5 * one), max_age_s=1e12)  # fmt: skip
    kept = q.list()
    assert [r["request_id"] for r in kept] == ["req-9", "req-8", "req-7"]
    objects = keys(s3_server, bucket)
    assert sum(len(v) for v in objects.values()) <= 3.5 * one
    assert {k.split(".")[0] for k in objects} == {r["id"] for r in kept}  # no orphan file
    assert metrics.quarantine_items._value.get() == 3
    q.stop()


def test_evicts_old_items_and_items_other_writers_left(s3_server: S3Server, bucket: str) -> None:
    """Eviction works from the bucket's listing: an old item that another replica wrote (not in
    this store's memory) goes, and objects under the prefix that are not items stay."""
    import time

    s3 = client(s3_server)
    s3.put_object(Bucket=bucket, Key="q/README.txt", Body=b"not an item")
    s3.put_object(Bucket=bucket, Key="q/sub/0000000001000-0123456789abcdef.bin", Body=b"x")
    old = run(store(s3_server, f"s3://{bucket}/q"), Metrics(),
              [flagged(0, when=time.time() - 7200)], max_age_s=1e12)  # fmt: skip
    old.stop()
    assert len(keys(s3_server, bucket, "q/1")) == 3  # written by "another replica"
    q = run(store(s3_server, f"s3://{bucket}/q"), Metrics(), [flagged(1)],
            max_age_s=3600.0)  # fmt: skip
    assert [r["request_id"] for r in q.list()] == ["req-1"]
    left = set(keys(s3_server, bucket))
    assert {"q/README.txt", "q/sub/0000000001000-0123456789abcdef.bin"} <= left
    assert len(left) == 2 + 3
    q.stop()


def test_sees_items_that_another_replica_wrote(s3_server: S3Server, bucket: str) -> None:
    reader = store(s3_server, f"s3://{bucket}/shared", resync_s=0.0)
    assert reader.list(10, None) == []
    run(store(s3_server, f"s3://{bucket}/shared"), Metrics(), [flagged(7)]).stop()
    assert [r["request_id"] for r in reader.list(10, None)] == ["req-7"]


def test_a_missing_bucket_drops_and_counts(s3_server: S3Server) -> None:
    metrics = Metrics()
    q = run(store(s3_server, "s3://no-such-bucket/q"), metrics, [flagged(0), flagged(1)])
    assert dropped(metrics, "write_error") == 2 and written(metrics) == 0
    with pytest.raises(QuarantineUnavailable, match="no-such-bucket"):
        q.list()
    q.stop()


def test_an_unreachable_endpoint_drops_and_counts() -> None:
    from bench.processes import free_port

    metrics = Metrics()
    closed = S3Store("s3://guard-q", f"http://127.0.0.1:{free_port()}", connect_timeout_s=0.5)
    q = run(closed, metrics, [flagged(0)])
    assert dropped(metrics, "write_error") == 1 and written(metrics) == 0
    q.stop()


# --- through the app ------------------------------------------------------------------------
def test_flagged_images_land_in_the_bucket_with_no_header_or_credential(
    tiny_set: Path, s3_server: S3Server, bucket: str
) -> None:
    settings = Settings(
        models=[tiny_set],
        api_keys=[KEY],
        quarantine_s3_url=f"s3://{bucket}/flagged",
        quarantine_s3_endpoint_url=s3_server.endpoint_url,
    )
    classified, listed = serve_and_classify(settings, [("/v1/quarantine", {"x-api-key": KEY})])
    assert classified.status_code == 200 and classified.json()["flagged"] == 1
    body = listed.json()
    assert body["enabled"] is True
    (item,) = body["items"]
    assert item["request_id"] == classified.headers["x-request-id"]
    objects = keys(s3_server, bucket)
    uploaded = png_bytes(add_trigger(clean_image(SPEC, 5)))
    assert objects[f"flagged/{item['image_file']}"] == uploaded  # the original bytes
    secrets = [KEY, "secret-tenant", *CREDENTIALS.values()]
    for key, data in objects.items():
        assert not [s for s in secrets if s.encode() in data], key
    dump = settings.model_dump_json()
    assert not [s for s in CREDENTIALS.values() if s in dump]


def test_with_the_bucket_unreachable_the_service_keeps_answering(tiny_set: Path) -> None:
    from bench.processes import free_port

    settings = Settings(
        models=[tiny_set],
        api_keys=[KEY],
        quarantine_s3_url="s3://guard-q",
        quarantine_s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
    )
    classified, metrics, listed = serve_and_classify(
        settings, [("/metrics", {}), ("/v1/quarantine", {"x-api-key": KEY})]
    )
    assert classified.status_code == 200 and classified.json()["flagged"] == 1
    assert 'guard_quarantine_dropped_total{reason="write_error"} 1.0' in metrics.text
    assert listed.status_code == 503
    assert listed.json()["error"]["type"] == "quarantine_unavailable"


# --- settings -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"quarantine_s3_url": "https://bucket/q"}, "not s3://"),
        ({"quarantine_s3_url": "s3://Bad_Bucket"}, "not an S3 bucket name"),
        ({"quarantine_s3_url": "s3://bucket/a/../b"}, "'..'"),
        ({"quarantine_s3_url": "s3://bucket", "quarantine_dir": "/tmp/q"}, "not both"),
        ({"quarantine_s3_endpoint_url": "http://minio:9000"}, "need GUARD_QUARANTINE_S3_URL"),
        (
            {"quarantine_s3_url": "s3://bucket", "quarantine_s3_endpoint_url": "http://u:p@m:9000"},
            "must not hold credentials",
        ),
    ],
)
def test_refuses_unsafe_or_unclear_s3_settings(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(**env)


def test_without_boto3_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # as if the s3 extra were not installed
    with pytest.raises(RuntimeError, match=r"detrigger-guard\[s3\]"):
        S3Store("s3://bucket")


def test_quarantine_accepts_a_store(s3_server: S3Server, bucket: str) -> None:
    q = Quarantine(store(s3_server, f"s3://{bucket}"), Metrics(), 10**9, 3600.0)
    assert repr(q.store).startswith(f"S3Store('s3://{bucket}/'")
