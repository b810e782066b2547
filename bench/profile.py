"""A py-spy profile of a server under load: the functions where its Python threads spend their
samples, by own time (the frame that was running) and by total time (anywhere on the stack)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):\d+\)$")
# Frames under which everything runs (interpreter start, uvicorn's start, the thread and
# executor entry points): left out of the total-time ranking, where they would fill the top.
ENTRY_FILES = (
    "<frozen runpy>", "click/core.py", "uvicorn/main.py", "uvicorn/__main__.py",
    "uvicorn/_compat.py", "uvicorn/server.py", "asyncio/runners.py", "asyncio/base_events.py",
    "asyncio/events.py", "threading.py", "futures/thread.py", "_backends/_asyncio.py",
)  # fmt: skip


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start(
    pid: int, seconds: float, rate: int = 250, gil: bool = False
) -> tuple[subprocess.Popen[bytes], Path]:
    """py-spy sampling ``pid`` for ``seconds`` (raw collapsed stacks); wait for it with
    :func:`finish`. --nonblocking: the server is not paused to be sampled (paused, the guard
    lost a third of its throughput here). ``gil``: only the thread that holds the GIL."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed (make bench installs it)")
    out = Path(tempfile.mkdtemp(prefix="bench-pyspy-")) / "stacks.txt"
    process = subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
         "--rate", str(rate), "--format", "raw", "--nonblocking", "--output", str(out),
         *(["--gil"] if gil else [])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    return process, out


def finish(process: subprocess.Popen[bytes], out: Path, top: int) -> dict[str, object]:
    try:
        log = process.communicate(timeout=120)[0].decode(errors="replace")
        if process.returncode != 0 or not out.exists():
            raise RuntimeError(f"py-spy failed ({process.returncode}): {log[-2000:]}")
        return summarise(out.read_text(), top)
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


def short(frame: str) -> str | None:
    """'func (path/to/file.py:12)' -> 'func (to/file.py)'; None for thread and process frames."""
    match = FRAME.match(frame)
    if match is None:
        return None
    path = match.group("file")
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = "/".join(Path(path).parts[-2:])
    return f"{match.group('func')} ({path})"


def summarise(raw: str, top: int) -> dict[str, object]:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in (short(x) for x in stack.split(";")) if f is not None]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for name in set(frames):
            if not name.endswith(tuple(f"({f})" for f in ENTRY_FILES)):
                total[name] += count

    def rows(counter: Counter[str]) -> list[dict[str, object]]:
        return [
            {"function": name, "samples": n, "percent": round(100 * n / samples, 1)}
            for name, n in counter.most_common(top)
        ]

    return {"samples": samples, "own": rows(own), "total": rows(total)}
