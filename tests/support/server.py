"""Start the guard under a real uvicorn on 127.0.0.1, on a free port, in a subprocess; its V2
gRPC server on another free port (``grpc_target``), unless the env turns it off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.processes import free_port, stop

REPO = Path(__file__).resolve().parents[2]


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    grpc_port: int = 0  # 0: no gRPC server
    kept_log: str | None = None  # the log's text once the server stopped and its folder went

    @property
    def grpc_target(self) -> str:
        """host:port of the V2 gRPC server, as tritonclient.grpc takes it."""
        assert self.grpc_port, "this server runs no gRPC server"
        return f"127.0.0.1:{self.grpc_port}"

    def log_text(self) -> str:
        if self.kept_log is not None:
            return self.kept_log
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines (the guard's own); other lines are skipped."""
        records = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return records

    def readiness_reason(self, name: str, says: str, timeout: float = 20.0) -> str:
        """Poll /readyz until set `name`'s reason contains `says` (a proxy set is loaded, then
        its upstream probed); the last reason, for the caller to assert on."""
        deadline = time.monotonic() + timeout
        reason = ""
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline and says not in reason:
                reason = client.get(self.url + "/readyz").json()["models"].get(name, "")
                time.sleep(0.1)
        return reason


def post_classify(server: RunningServer, items: Sequence[bytes], **params: str) -> httpx.Response:
    """POST the PNG ``items`` to /classify as multipart field ``images`` (img0.png, ...)."""
    files = [("images", (f"img{i}.png", data, "image/png")) for i, data in enumerate(items)]
    return httpx.post(server.url + "/classify", files=files, params=params, timeout=30)


def binary_proxy_env(upstream: RunningServer, name: str) -> dict[str, str]:
    """Settings of a guard in proxy mode whose set ``name`` calls the model of that name on
    ``upstream`` over V2 REST with binary tensors, one intra-op thread."""
    config = {name: {"url": upstream.url, "model": name, "binary": True}}
    return {"GUARD_UPSTREAMS": json.dumps(config), "GUARD_INTRA_OP_THREADS": "1"}


def _wait(server: RunningServer, path: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                return False
            try:
                if client.get(server.url + path).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    return False


@contextmanager
def serve(
    model_dirs: Sequence[Path | str],
    env: Mapping[str, str] | None = None,
    *,
    wait_ready: bool = True,
    timeout: float = 60.0,
    extra_args: Sequence[str] = (),
) -> Iterator[RunningServer]:
    """Run ``uvicorn service.main:app`` (what make serve runs) with GUARD_MODELS=model_dirs.

    Waits for /readyz (or only /healthz when ``wait_ready`` is false). The server's stdout and
    stderr go to a log file, readable with ``log_text()``.
    """
    full_env = {**os.environ, "GUARD_MODELS": json.dumps([str(p) for p in model_dirs])}
    full_env.update(env or {})
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    with tempfile.TemporaryDirectory(prefix="guard-server-") as tmp:
        log_dir = Path(tmp)
        wants_grpc = (env or {}).get("GUARD_GRPC_PORT") != "0"
        for attempt in range(3):
            port = free_port()
            grpc_port = free_port() if wants_grpc else 0
            full_env["GUARD_GRPC_PORT"] = str(grpc_port)
            log_path = log_dir / f"server-{attempt}.log"
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "service.main:app",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--no-access-log",
                        "--log-level",
                        "warning",
                        *extra_args,
                    ],  # fmt: skip
                    cwd=REPO,
                    env=full_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            server = RunningServer(f"http://127.0.0.1:{port}", process, log_path, grpc_port)
            try:
                if _wait(server, "/readyz" if wait_ready else "/healthz", timeout):
                    yield server
                    return
                lost_race = ("address already in use", "cannot bind")
                if process.poll() is not None and any(s in server.log_text() for s in lost_race):
                    continue  # lost the port race; try another
                raise RuntimeError(f"guard server did not come up:\n{server.log_text()[-4000:]}")
            finally:
                stop(process)
                server.kept_log = server.log_text()
        raise RuntimeError("guard server: no free port after 3 attempts")


@contextmanager
def start_server(
    model_dirs: Sequence[Path | str], env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """The simple form: a ready guard on loopback; yields its base URL."""
    with serve(model_dirs, env) as server:
        yield server.url
