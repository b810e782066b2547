"""Benchmark the guard: ``python -m bench.run`` (what ``make bench`` runs).

1. Starts the guard under a real uvicorn on 127.0.0.1 (tests/support/server.py) on
   models/mnist, or, when that set is not shipped yet, on a tiny set built here (said so in the
   report).
2. For 1-image and 64-image multipart requests at concurrency 1, 8 and 32: images per second
   and p50 / p95 / p99 request latency, over a fixed duration after a warm-up.
3. With the server stopped, once before and once after step 2: the in-process ONNX Runtime
   ceiling for the same set (AE, then the target on [x; AE(x)], as the engine runs it) at several
   batch sizes; the ceiling is the best pass at the best batch size. Two passes, because on a
   shared machine the CPU left to us drifts while the benchmark runs.
4. The ratio of the best service throughput to that ceiling.

Writes reports/bench/bench.json and reports/bench/bench.md with the hardware, versions and
command next to the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service.runtime.modelset import ModelSet
from service.settings import Settings
from tests.support.promtext import scrape, value
from tests.support.samples import load_samples
from tests.support.server import serve
from tests.support.tiny_models import TinySpec, build_model_set

REPO = Path(__file__).resolve().parents[1]
SIZES = (1, 64)
CONCURRENCY = (1, 8, 32)
CEILING_BATCHES = (1, 8, 16, 32, 64, 128, 256)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("onnxruntime", "fastapi", "starlette", "uvicorn", "numpy", "pillow", "httpx"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
            check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "none (uncommitted tree)"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def model_set_dir(arg: str | None, scratch: Path) -> tuple[Path, str]:
    if arg:
        return Path(arg), "given with --model-dir"
    shipped = REPO / "models" / "mnist"
    if (shipped / "manifest.json").exists():
        return shipped, "the shipped models/mnist"
    folder = build_model_set(scratch / "tiny", TinySpec(name="tiny"), samples=32)
    return folder, (
        "a tiny stand-in set (linear target, patch-masking AE, 28x28x1) built by the bench, "
        "because models/mnist was not shipped yet; numbers for a real CNN will be lower"
    )


def request_body(images: list[bytes], count: int) -> tuple[bytes, dict[str, str]]:
    """A multipart body, encoded once, so the client spends its CPU on sending, not encoding."""
    files = [("images", (f"{i}.png", images[i % len(images)], "image/png")) for i in range(count)]
    request = httpx.Request("POST", "http://x/classify", files=files)
    body = request.read()
    return body, {"content-type": request.headers["content-type"]}


class RawHTTPClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams.

    httpx costs about as much CPU per request as the guard itself; on a 2-core machine that
    would measure the client. This one sends pre-built request bytes and reads the response by
    Content-Length, so nearly all the CPU it leaves goes to the server.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> int:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, val = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(val)
            elif name == b"connection" and val.strip().lower() == b"close":
                close = True
        await self.reader.readexactly(length)
        if close:
            await self.close()
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def raw_request(url: str, body: bytes, headers: dict[str, str]) -> bytes:
    host = url.split("//", 1)[1]
    lines = ["POST /classify HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def load(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float
) -> tuple[list[float], int, float]:
    """``concurrency`` clients post back to back for ``seconds``; latencies of 200s, errors."""
    latencies: list[float] = []
    errors = 0
    raw = raw_request(url, body, headers)
    host, port = url.split("//", 1)[1].split(":")
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        client = RawHTTPClient(host, int(port))
        try:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                status = await client.request(raw)
                if status == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1
        finally:
            await client.close()

    begun = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - begun


def bench_service(folder: Path, images: list[bytes], seconds: float, warmup: float) -> list[dict]:
    rows = []
    with serve([folder], timeout=180) as server:
        for size in SIZES:
            body, headers = request_body(images, size)
            for concurrency in CONCURRENCY:
                asyncio.run(load(server.url, body, headers, concurrency, warmup))
                before = scrape(server.url)
                latencies, errors, elapsed = asyncio.run(
                    load(server.url, body, headers, concurrency, seconds)
                )
                after = scrape(server.url)
                name = after_name(after)
                series = {"model": name, "detector": "detrigger"}
                batches = value(after, "guard_batch_size_count", **series) - value(
                    before, "guard_batch_size_count", **series
                )
                batched = value(after, "guard_batch_size_sum", **series) - value(
                    before, "guard_batch_size_sum", **series
                )
                row = {
                    "images_per_request": size,
                    "concurrency": concurrency,
                    "requests": len(latencies),
                    "errors": errors,
                    "seconds": round(elapsed, 3),
                    "images_per_s": round(len(latencies) * size / elapsed, 1),
                    "p50_ms": round(percentile(latencies, 50) * 1000, 2),
                    "p95_ms": round(percentile(latencies, 95) * 1000, 2),
                    "p99_ms": round(percentile(latencies, 99) * 1000, 2),
                    "mean_engine_batch": round(batched / batches, 1) if batches else None,
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def after_name(samples: dict) -> str:
    for (name, labels), _ in samples.items():
        if name == "guard_model_ready":
            return dict(labels)["model"]
    raise RuntimeError("no guard_model_ready series")


def bench_ceiling(folder: Path, seconds: float) -> list[dict]:
    """In-process: AE(x), then the target on [x; AE(x)] in one call, at each batch size."""
    model_set = ModelSet.load(folder, Settings(models=[folder]))
    c, h, w = model_set.input_chw
    rng = np.random.default_rng(0)
    rows = []
    for batch in CEILING_BATCHES:
        x = rng.random((batch, c, h, w), dtype=np.float32)
        model_set.infer_scored(x)  # warm this shape
        runs = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            model_set.infer_scored(x)
            runs += 1
        elapsed = time.perf_counter() - started
        row = {
            "batch": batch,
            "runs": runs,
            "images_per_s": round(runs * batch / elapsed, 1),
            "ms_per_batch": round(elapsed / runs * 1000, 3),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "# Guard benchmark",
        "",
        f"- Command: `{report['command']}`",
        f"- When: {report['started']} (UTC), git {env['git']}",
        f"- Hardware: {env['cpu']}, {env['cpus']} CPU cores visible, no GPU; "
        f"load average before the run {env['loadavg_before']}, after {env['loadavg_after']} "
        "(a shared machine: other jobs ran at the same time)",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
        f"- Model set: `{report['model_set']['name']}` ({report['model_set']['source']}), "
        f"provider {report['model_set']['provider']}, target sha256 "
        f"{report['model_set']['target_sha256'][:12]}, detrigger sha256 "
        f"{report['model_set']['detrigger_sha256'][:12]}",
        f"- Guard settings: {report['settings']}",
        f"- Method: real uvicorn (1 worker) on 127.0.0.1; the client runs on the same machine "
        "(a minimal keep-alive HTTP/1.1 client on asyncio, one connection per concurrent caller, "
        f"multipart PNG bodies encoded once); {report['seconds']} s per cell after "
        f"{report['warmup']} s of warm-up; latency is per request, seen by the client.",
        "",
        "## Through the service",
        "",
        "| images/request | concurrency | images/s | p50 ms | p95 ms | p99 ms | requests | errors "
        "| mean engine batch |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["service"]:
        lines.append(
            f"| {r['images_per_request']} | {r['concurrency']} | {r['images_per_s']} | "
            f"{r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['requests']} | {r['errors']} | "
            f"{r['mean_engine_batch']} |"
        )
    lines += [
        "",
        "## In-process ONNX Runtime ceiling (AE, then the target on [x; AE(x)] in one call)",
        "",
        "| batch | images/s before | images/s after | best images/s |",
        "|---:|---:|---:|---:|",
    ]
    for r in report["ceiling"]:
        lines.append(
            f"| {r['batch']} | {r['before_images_per_s']} | {r['after_images_per_s']} | "
            f"{r['images_per_s']} |"
        )
    s = report["summary"]
    lines += [
        "",
        "## Summary",
        "",
        f"- Best through the service: {s['service_best_images_per_s']} images/s "
        f"({s['service_best_cell']}).",
        f"- Ceiling: {s['ceiling_images_per_s']} images/s at batch {s['ceiling_batch']} (the "
        "better of the passes before and after the service cells).",
        f"- Service / ceiling: **{s['ratio']:.2f}**.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-dir", help="model-set folder (default: models/mnist, else a tiny set)"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per cell")
    parser.add_argument("--out", default="reports/bench", help="output folder")
    args = parser.parse_args(argv)

    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    loadavg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        folder, source = model_set_dir(args.model_dir, Path(scratch))
        samples = load_samples(folder)
        if not samples:
            raise SystemExit(f"{folder} has no samples/ to send")
        images = [s.read() for s in samples]
        ceiling_seconds = max(1.0, args.seconds / 2.5)
        before = bench_ceiling(folder, ceiling_seconds)
        service = bench_service(folder, images, args.seconds, args.warmup)
        after = bench_ceiling(folder, ceiling_seconds)
        ceiling = [
            {
                "batch": b["batch"],
                "before_images_per_s": b["images_per_s"],
                "after_images_per_s": a["images_per_s"],
                "images_per_s": max(b["images_per_s"], a["images_per_s"]),
            }
            for b, a in zip(before, after, strict=True)
        ]
        model_set = ModelSet.load(folder, Settings(models=[folder]))

    best = max(service, key=lambda r: r["images_per_s"])
    top = max(ceiling, key=lambda r: r["images_per_s"])
    settings = Settings(models=[folder])
    report = {
        # What ran; `make bench` runs `.venv/bin/python -m bench.run` with no arguments.
        "command": shlex.join(
            [os.path.relpath(sys.executable, REPO), "-m", "bench.run", *(argv or sys.argv[1:])]
        ),
        "started": started,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "environment": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "loadavg_before": loadavg,
            "loadavg_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "platform": platform.platform(),
            "versions": versions(),
            "git": git_commit(),
        },
        "model_set": {
            "name": model_set.name,
            "source": source,
            "provider": model_set.provider,
            "target_sha256": model_set.manifest.target.sha256,
            "detrigger_sha256": model_set.manifest.detrigger.sha256,
            "decision_rule": model_set.manifest.decision.rule,
        },
        "settings": {
            "max_batch_size": settings.max_batch_size,
            "max_batch_wait_ms": settings.max_batch_wait_ms,
            "intra_op_threads": settings.intra_op_threads,
            "inter_op_threads": settings.inter_op_threads,
            "graph_optimization": settings.graph_optimization,
            "uvicorn_workers": 1,
        },
        "service": service,
        "ceiling": ceiling,
        "summary": {
            "service_best_images_per_s": best["images_per_s"],
            "service_best_cell": f"{best['images_per_request']} images/request, "
            f"concurrency {best['concurrency']}",
            "ceiling_images_per_s": top["images_per_s"],
            "ceiling_batch": top["batch"],
            "ratio": best["images_per_s"] / top["images_per_s"],
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(report))
    print(f"wrote {out / 'bench.md'} and {out / 'bench.json'}")
    print(f"service/ceiling = {report['summary']['ratio']:.2f}")


if __name__ == "__main__":
    main()
