"""Run a real Prometheus (Debian's package: /usr/bin/prometheus) that scrapes given targets."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx

from bench.processes import free_port, stop


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


@dataclass
class RunningPrometheus:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def query(self, promql: str) -> list[dict]:
        r = httpx.get(self.url + "/api/v1/query", params={"query": promql}, timeout=5)
        r.raise_for_status()
        body = r.json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def scalar(self, promql: str) -> float | None:
        """The value of a query with one result, None while there is none."""
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, promql: str, want: float, timeout: float = 30.0) -> float | None:
        deadline = time.monotonic() + timeout
        got = None
        while time.monotonic() < deadline:
            got = self.scalar(promql)
            if got == want:
                return got
            time.sleep(0.25)
        return got


@contextmanager
def run_prometheus(
    targets: Sequence[str], *, job: str = "guard", interval: str = "1s", extra_config: str = ""
) -> Iterator[RunningPrometheus]:
    """Prometheus scraping ``targets`` (base URLs such as http://127.0.0.1:8123) every interval."""
    binary = prometheus_binary()
    if binary is None:
        raise RuntimeError("prometheus is not installed (apt-get install prometheus)")
    with tempfile.TemporaryDirectory(prefix="prometheus-") as tmp:
        work = Path(tmp)
        hostports = ", ".join(f"'{urlparse(t).netloc}'" for t in targets)
        config = work / "prometheus.yml"
        config.write_text(
            f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
            f"scrape_configs:\n  - job_name: {job}\n    static_configs:\n"
            f"      - targets: [{hostports}]\n{extra_config}"
        )
        for attempt in range(3):
            port = free_port()
            log_path = work / f"prometheus-{attempt}.log"
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={work / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            running = RunningPrometheus(f"http://127.0.0.1:{port}", process, log_path)
            try:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and process.poll() is None:
                    try:
                        if httpx.get(running.url + "/-/ready", timeout=1).status_code == 200:
                            yield running
                            return
                    except httpx.TransportError:
                        pass
                    time.sleep(0.2)
                text = log_path.read_text(errors="replace")
                if "address already in use" in text:
                    continue
                raise RuntimeError(f"prometheus did not start:\n{text[-3000:]}")
            finally:
                stop(process)
        raise RuntimeError("prometheus: no free port after 3 attempts")
