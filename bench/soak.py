"""Soak the guard: ``python -m bench.soak`` (what ``make soak`` runs; not in CI).

Starts the guard under a real uvicorn on 127.0.0.1 (``uvicorn service.main:app``, as ``make
serve`` runs it) on models/mnist, then keeps CONCURRENCY callers busy for SECONDS with a mix of
requests on the shipped samples (clean and triggered): /classify multipart, /classify JSON
(base64) and V2 infer (BYTES, base64). Prints the requests, the errors (a non-2xx answer or a
transport error), the latency, and the server's RSS and open file descriptors before, during
(every 10 s) and after, read from /proc/<pid>. docs/service.md ("Soak") has the last figures.

Exit status 1 when any request failed or the server died.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import os
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from bench.run import cpu_model
from tests.support.samples import Sample, load_samples
from tests.support.server import serve

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SECONDS = float(os.environ.get("SOAK_SECONDS", "180"))
KINDS = ("classify_multipart", "classify_json", "v2_bytes")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


@dataclass
class Tally:
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    missed: int = 0  # a triggered sample not flagged (the model's own miss, not an error)


async def one_request(client: httpx.AsyncClient, kind: str, sample: Sample, model: str) -> bool:
    """Send one request; True when the guard flagged the image."""
    data = sample.read()
    if kind == "classify_multipart":
        files = {"images": (sample.path.name, data, "image/png")}
        response = await client.post("/classify", files=files)
        response.raise_for_status()
        return bool(response.json()["results"][0]["flagged"])
    text = base64.b64encode(data).decode()
    if kind == "classify_json":
        response = await client.post("/classify", json={"images": [{"data": text}]})
        response.raise_for_status()
        return bool(response.json()["results"][0]["flagged"])
    body = {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": [text]}]}
    response = await client.post(f"/v2/models/{model}/infer", json=body)
    response.raise_for_status()
    return json.loads(response.json()["parameters"]["guard_flagged"]) == [True]


async def caller(
    index: int,
    client: httpx.AsyncClient,
    samples: list[Sample],
    model: str,
    deadline: float,
    tally: Tally,
) -> None:
    i = index
    while time.monotonic() < deadline:
        kind, sample = KINDS[i % len(KINDS)], samples[i % len(samples)]
        i += 1
        started = time.perf_counter()
        try:
            flagged = await one_request(client, kind, sample, model)
        except httpx.HTTPStatusError as exc:
            tally.errors[f"{kind} {exc.response.status_code}"] += 1
        except httpx.HTTPError as exc:
            tally.errors[f"{kind} {type(exc).__name__}"] += 1
        else:
            tally.latencies.append(time.perf_counter() - started)
            tally.missed += sample.triggered and not flagged
        tally.requests += 1
        tally.kinds[kind] += 1


async def watch(pid: int, deadline: float, timeline: list[tuple[float, int, int]]) -> None:
    start = time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
        timeline.append((time.monotonic() - start, rss_bytes(pid), fd_count(pid)))


async def soak(url: str, pid: int, seconds: float, concurrency: int, samples: list[Sample]) -> dict:
    model = json.loads(httpx.get(url + "/v1/models").text)["models"][0]["name"]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as client:
        warm = Tally()
        await caller(0, client, samples, model, time.monotonic() + 3.0, warm)  # warm-up
        before = (rss_bytes(pid), fd_count(pid))
        tally, timeline = Tally(), []
        started = time.monotonic()
        deadline = started + seconds
        await asyncio.gather(
            watch(pid, deadline, timeline),
            *(caller(i, client, samples, model, deadline, tally) for i in range(concurrency)),
        )
        elapsed = time.monotonic() - started
    await asyncio.sleep(1.0)  # let the server close what the client closed
    after = (rss_bytes(pid), fd_count(pid))
    lat = np.asarray(tally.latencies or [0.0]) * 1000.0
    return {
        "seconds": round(elapsed, 1),
        "concurrency": concurrency,
        "requests": tally.requests,
        "requests_per_s": round(tally.requests / elapsed, 1),
        "by_kind": dict(tally.kinds),
        "errors": sum(tally.errors.values()),
        "error_kinds": dict(tally.errors),
        "triggered_not_flagged": tally.missed,
        "latency_ms": {
            "p50": round(float(np.percentile(lat, 50)), 1),
            "p99": round(float(np.percentile(lat, 99)), 1),
            "max": round(float(lat.max()), 1),
        },
        "rss_before": before[0],
        "rss_after": after[0],
        "fds_before": before[1],
        "fds_after": after[1],
        "timeline": [{"t_s": round(t, 0), "rss": r, "fds": f} for t, r, f in timeline],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        help="how long to soak (default $SOAK_SECONDS or 180)",
    )
    parser.add_argument("--concurrency", type=int, default=32, help="callers at once (32)")
    parser.add_argument(
        "--model-dir", type=Path, default=REPO / "models" / "mnist", help="model set to serve"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.concurrency < 1:
        parser.error("--seconds must be > 0 and --concurrency >= 1")
    samples = load_samples(args.model_dir)
    if not samples:
        parser.error(f"{args.model_dir} has no samples/ (make reproduce DATASET=mnist)")
    env = {"GUARD_MAX_QUEUE_IMAGES": "4096"}
    with serve([args.model_dir], env) as server:
        pid = server.process.pid
        result = asyncio.run(soak(server.url, pid, args.seconds, args.concurrency, samples))
        alive = server.process.poll() is None
    result.update(
        {
            "server_alive": alive,
            "command": " ".join([Path(sys.executable).name, "-m", "bench.soak", *sys.argv[1:]]),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        }
    )
    print(
        f"soak: {result['requests']} requests in {result['seconds']} s at concurrency "
        f"{result['concurrency']} ({result['requests_per_s']}/s), {result['errors']} errors "
        f"{result['error_kinds'] or ''}\n"
        f"  latency ms p50 {result['latency_ms']['p50']} p99 {result['latency_ms']['p99']} "
        f"max {result['latency_ms']['max']}; triggered not flagged: "
        f"{result['triggered_not_flagged']}\n"
        f"  server RSS {mib(result['rss_before'])} -> {mib(result['rss_after'])}, "
        f"fds {result['fds_before']} -> {result['fds_after']}, alive: {alive}\n"
        "  timeline: "
        + ", ".join(f"{p['t_s']:.0f}s {mib(p['rss'])}/{p['fds']}fd" for p in result["timeline"])
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["errors"] == 0 and alive else 1


if __name__ == "__main__":
    sys.exit(main())
