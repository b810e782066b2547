"""Every bad input gets its 4xx with a JSON body saying what is accepted; never a 500; the
server stays ready and keeps serving."""

import base64
import gzip
import io
import json
import socket
import struct
import zlib
from urllib.parse import urlparse

import httpx
import pytest
from PIL import Image

from tests.support.promtext import scrape, value
from tests.support.server import RunningServer
from tests.support.tiny_models import TinySpec, add_trigger, clean_image, png_bytes

pytestmark = pytest.mark.slow

SPEC = TinySpec()
GOOD = png_bytes(clean_image(SPEC, 5))
LIMIT = 1024 * 1024  # GUARD_MAX_BODY_BYTES of the guard_server fixture


def png_bomb_header(side: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def files(*items: bytes, field: str = "images") -> list:
    return [(field, (f"f{i}.png", data, "image/png")) for i, data in enumerate(items)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tiff() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(clean_image(SPEC, 1)).save(buffer, format="TIFF")
    return buffer.getvalue()


# (case id, request kwargs for httpx.request, status, error type)
CASES = [
    ("truncated png", dict(files=files(GOOD[: len(GOOD) // 2])), 422, "invalid_image"),
    ("corrupt png", dict(files=files(GOOD[:40] + b"\xff" * 200)), 422, "invalid_image"),
    ("not an image", dict(files=files(b"GIF? no, just text")), 422, "invalid_image"),
    ("tiff not accepted", dict(files=files(tiff())), 422, "invalid_image"),
    ("empty file", dict(files=files(b"")), 422, "invalid_image"),
    ("one bad among good", dict(files=files(GOOD, b"junk", GOOD)), 422, "invalid_image"),
    ("wrong field name", dict(files=files(GOOD, field="file")), 400, "invalid_request"),
    (
        "multipart without files",
        dict(data={"images": "text"}, files=files(GOOD, field="x")),
        400,
        "invalid_request",
    ),
    (
        "wrong size",
        dict(files=files(png_bytes(clean_image(TinySpec(height=32, width=32), 1)))),
        422,
        "wrong_image_size",
    ),
    ("pixel bomb", dict(files=files(png_bomb_header(50_000))), 413, "image_too_large"),
    ("too many images", dict(files=files(*[GOOD] * 41)), 413, "too_many_images"),
    (
        "gzip body",  # was parsed as JSON and reported as "invalid JSON"
        dict(
            content=gzip.compress(json.dumps({"images": [{"data": b64(GOOD)}]}).encode()),
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        ),
        400,
        "invalid_request",
    ),
    (
        "text/plain",
        dict(content=b"hello", headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    ),
    (
        "raw png body",
        dict(content=GOOD, headers={"content-type": "image/png"}),
        415,
        "unsupported_media_type",
    ),
    ("no content type", dict(content=b"", headers={}), 415, "unsupported_media_type"),
    (
        "bad json",
        dict(content=b"{not json", headers={"content-type": "application/json"}),
        400,
        "invalid_request",
    ),
    ("json no images", dict(json={"images": []}), 400, "invalid_request"),
    ("json wrong key", dict(json={"image": [{"data": b64(GOOD)}]}), 400, "invalid_request"),
    (
        "json bad base64",
        dict(json={"images": [{"data": "!!!not-base64!!!"}]}),
        400,
        "invalid_request",
    ),
    (
        "json not an image",
        dict(json={"images": [{"data": b64(b"plain text")}]}),
        422,
        "invalid_image",
    ),
    ("json too many", dict(json={"images": [{"data": b64(GOOD)}] * 41}), 413, "too_many_images"),
    (
        "json bad mode",
        dict(json={"mode": "ignore", "images": [{"data": b64(GOOD)}]}),
        400,
        "invalid_request",
    ),
    (
        "query bad mode",
        dict(params={"mode": "ignore"}, files=files(GOOD)),
        422,
        "invalid_parameter",
    ),
    ("unknown model", dict(params={"model": "nope"}, files=files(GOOD)), 404, "unknown_model"),
    (
        "body over limit",
        dict(content=b"x" * (LIMIT + 1), headers={"content-type": "application/json"}),
        413,
        "payload_too_large",
    ),
]


@pytest.mark.parametrize("case, kwargs, status, kind", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_its_4xx(
    guard_server: RunningServer, case: str, kwargs: dict, status: int, kind: str
) -> None:
    r = httpx.request("POST", guard_server.url + "/classify", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == kind
    assert error["message"] and error["accepted"], error
    assert r.json()["request_id"] == r.headers["x-request-id"]


def test_wrong_method_and_route_are_json_4xx(guard_server: RunningServer) -> None:
    r = httpx.get(guard_server.url + "/classify")
    assert r.status_code == 405 and r.json()["error"]["type"] == "method_not_allowed"
    r = httpx.get(guard_server.url + "/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"


def _raw_request(url: str, head: bytes, body_chunks: list[bytes]) -> bytes:
    """Send a request by hand and read whatever the server answers before we finish."""
    parsed = urlparse(url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as sock:
        sock.sendall(head)
        for chunk in body_chunks:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            part = sock.recv(65536)
            if not part:
                break
            data += part
        return data


def test_declared_length_over_limit_is_refused_before_the_body(guard_server: RunningServer) -> None:
    # Declare 100 MB, send nothing: the 413 must come without the server waiting for the body.
    head = (
        b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 104857600\r\n\r\n"
    )
    labels = {"route": "/classify", "method": "POST", "status_class": "4xx"}
    before = value(scrape(guard_server.url), "guard_http_requests_total", **labels)
    answer = _raw_request(guard_server.url, head, [])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"payload_too_large"' in answer
    assert b"x-request-id" in answer.lower()
    # Answered before routing, and still counted under its route template.
    assert value(scrape(guard_server.url), "guard_http_requests_total", **labels) == before + 1


def test_streamed_body_over_limit_is_cut_off(guard_server: RunningServer) -> None:
    # Chunked upload with no length: the server counts bytes and answers once past the limit,
    # without waiting for the terminating chunk (which is never sent).
    head = (
        b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"a" * 65536
    chunk = b"%x\r\n" % len(piece) + piece + b"\r\n"
    answer = _raw_request(guard_server.url, head, [chunk] * (LIMIT // len(piece) + 2))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["type"] == "payload_too_large"
    assert str(LIMIT) in body["error"]["message"]


def test_server_stays_ready_and_serving_after_all_bad_input(guard_server: RunningServer) -> None:
    # Runs after the cases above (file order): still ready, still right.
    assert httpx.get(guard_server.url + "/readyz").status_code == 200
    trig = png_bytes(add_trigger(clean_image(SPEC, 9)))
    r = httpx.post(guard_server.url + "/classify", files=files(GOOD, trig))
    assert r.status_code == 200
    assert [x["flagged"] for x in r.json()["results"]] == [False, True]
    assert "Traceback" not in guard_server.log_text()
    assert '"status": 500' not in guard_server.log_text()


def test_mutated_multipart_bodies_never_give_a_5xx(guard_server: RunningServer) -> None:
    # Seeded byte-level mutations of a valid upload: flips, cuts and insertions hit the
    # multipart framing, the part headers and the PNG itself.
    import random

    request = httpx.Request("POST", guard_server.url + "/classify", files=files(GOOD))
    body, content_type = request.read(), request.headers["content-type"]
    rng = random.Random(1234)
    statuses: dict[int, int] = {}
    with httpx.Client(timeout=30) as client:
        for _ in range(150):
            mutated = bytearray(body)
            for _ in range(rng.randint(1, 6)):
                pos = rng.randrange(len(mutated))
                op = rng.random()
                if op < 0.4:
                    mutated[pos] = rng.randrange(256)
                elif op < 0.7:
                    del mutated[pos : pos + rng.randint(1, 40)]
                else:
                    mutated[pos:pos] = rng.randbytes(rng.randint(1, 20))
            r = client.post(
                guard_server.url + "/classify",
                content=bytes(mutated),
                headers={"content-type": content_type},
            )
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code != 200:
                assert r.json()["error"]["accepted"]
    assert set(statuses) <= {200, 400, 413, 422}, statuses
    assert statuses.get(400, 0) > 0 and statuses.get(422, 0) > 0  # the mutations did bite
    assert httpx.get(guard_server.url + "/readyz").status_code == 200
