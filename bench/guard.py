"""The guard under a real uvicorn, started as ``make serve`` starts it, in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.processes import free_port, stop

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class RunningGuard:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def guard_env(model_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the guard: ours, GUARD_MODELS = [model_dir], then ``extra``. The
    benchmark measures REST: no gRPC server, whose port 8001 a running ``make serve`` holds."""
    env = {
        **os.environ, "GUARD_MODELS": json.dumps([str(model_dir)]), "PYTHONUNBUFFERED": "1",
        "GUARD_GRPC_PORT": "0",
    }  # fmt: skip
    env.update(extra or {})
    return env


@contextmanager
def run_guard(env: Mapping[str, str], timeout: float = 180.0) -> Iterator[RunningGuard]:
    """``uvicorn service.main:app --no-access-log`` (make serve's command) on a free port;
    waits for /readyz."""
    with tempfile.TemporaryDirectory(prefix="bench-guard-") as tmp:
        log_dir = Path(tmp)
        for attempt in range(3):
            port = free_port()
            log_path = log_dir / f"guard-{attempt}.log"
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1",
                     "--port", str(port), "--no-access-log"],
                    cwd=REPO, env=dict(env), stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
            guard = RunningGuard(f"http://127.0.0.1:{port}", process, log_path)
            try:
                if _ready(guard, timeout):
                    yield guard
                    return
                text = log_path.read_text(errors="replace")
                if process.poll() is not None and "address already in use" in text:
                    continue  # lost the port race; try another
                raise RuntimeError(f"the guard did not get ready:\n{text[-4000:]}")
            finally:
                stop(process)
        raise RuntimeError("the guard: no free port after 3 attempts")


def _ready(guard: RunningGuard, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if guard.process.poll() is not None:
                return False
            try:
                if client.get(guard.url + "/readyz").status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    return False
