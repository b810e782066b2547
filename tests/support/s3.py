"""A real S3-compatible server for the tests: moto's standalone server (``moto.server``, the
``moto[server]`` extra) in its own process, on a free port, spoken to over HTTP by boto3."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from bench.processes import free_port, stop

# moto accepts any credentials; these only keep boto3 from looking further along its chain.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIAQUARANTINETEST01",
    "AWS_SECRET_ACCESS_KEY": "quarantine-test-secret-0d9b2c",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    process: subprocess.Popen[bytes]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def moto_server(timeout: float = 30.0) -> Iterator[S3Server]:
    for _ in range(3):  # another process may take the free port first
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            if _listening(port):
                try:
                    yield S3Server(f"http://127.0.0.1:{port}", process)
                finally:
                    stop(process)
                return
            time.sleep(0.1)
        stop(process)
    raise RuntimeError("moto's S3 server did not start (is moto[server] installed?)")
