"""The load generator: wrk (Debian's package, C, epoll), one thread, a fixed number of keep-alive
connections posting the same pre-built body back to back (a closed loop).

Why wrk: on a 2-core machine the client shares the CPU with the server it measures. wrk spends
a few microseconds per request (its own CPU seconds are in every cell of the report), where a
Python client spends tens to hundreds; and it is not the guard's or MLServer's own stack, so it
favours neither side.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("wrk_post.lua")
ERROR_KINDS = ("connect", "read", "write", "status", "timeout")


@dataclass(frozen=True)
class Body:
    """One request body, built once: what both servers get, byte for byte."""

    kind: str  # v2-json, v2-binary or png-multipart
    images: int
    file: Path
    headers: dict[str, str]

    def read(self) -> bytes:
        return self.file.read_bytes()


@dataclass(frozen=True)
class Load:
    requests: int  # answered, whatever the status
    errors: dict[str, int]  # wrk's counts: connect, read, write, status (non-2xx/3xx), timeout
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    client_cpu_s: float  # wrk's own user + system CPU

    @property
    def ok(self) -> int:
        return self.requests - self.errors["status"]

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit(
            "the benchmark needs wrk: `apt-get install -y wrk` (Debian/Ubuntu); make bench "
            "installs it when run as root"
        )
    return found


def wrk_version() -> str:
    out = subprocess.run([wrk_binary(), "-v"], capture_output=True, text=True)
    match = re.search(r"wrk (\S+)", out.stdout + out.stderr)
    return match.group(1) if match else "unknown"


def run_wrk(url: str, body: Body, concurrency: int, seconds: float, timeout_s: float) -> Load:
    """``concurrency`` connections on one wrk thread post ``body`` to ``url`` for ``seconds``."""
    command = [
        wrk_binary(), "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s",
        f"--timeout={max(1, round(timeout_s))}s", "-s", str(SCRIPT),
    ]  # fmt: skip
    for name, value in body.headers.items():
        command += ["-H", f"{name}: {value}"]
    command.append(url)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        command, env={**os.environ, "BENCH_BODY": str(body.file)}, capture_output=True,
        text=True, timeout=seconds + timeout_s + 30,
    )  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    r = json.loads(line.removeprefix("BENCH_RESULT "))
    return Load(
        requests=r["requests"],
        errors={k: r[k] for k in ERROR_KINDS},
        seconds=r["duration_us"] / 1e6,
        p50_ms=r["p50_us"] / 1000,
        p90_ms=r["p90_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        mean_ms=r["mean_us"] / 1000,
        client_cpu_s=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
    )
