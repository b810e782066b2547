"""Server processes the benchmark and the tests start: a free port, a clean stop, and the CPU
seconds a process tree has used (from /proc)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A port the OS just gave out; another process could take it, so callers retry."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (each thread's children file lists the children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants, threads included."""
    total = 0
    for member in process_tree(pid):
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def wait_idle(pid: int, timeout: float = 120.0, interval: float = 0.25) -> float:
    """Wait until ``pid``'s tree uses under 10% of one core over two intervals in a row, so that
    the work a stopped client left queued (requests in flight when wrk ended) does not run into
    the next measurement. Returns the seconds waited."""
    started = time.monotonic()
    quiet = 0
    last = cpu_seconds(pid)
    while quiet < 2 and time.monotonic() - started < timeout:
        time.sleep(interval)
        now = cpu_seconds(pid)
        quiet = quiet + 1 if now - last < 0.1 * interval else 0
        last = now
    return time.monotonic() - started
