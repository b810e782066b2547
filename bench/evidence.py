"""What a report carries beside its numbers: hardware, versions, commit, file hashes.
(training/evidence.py will hold the project's one copy; until then the benchmark keeps its own.)"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = (
    "onnxruntime", "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "pydantic", "numpy",
    "pillow", "py-spy",
)  # fmt: skip


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def hardware() -> dict[str, object]:
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gib": memory_gib(),
        "gpu": "none",
        "platform": platform.platform(),
    }


def versions(python: str | None = None, packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Python's and the packages' versions, of this interpreter or of ``python`` (another venv)."""
    code = (
        "import importlib.metadata as m, json, platform, sys\n"
        "out = {'python': platform.python_version()}\n"
        "for p in sys.argv[1:]:\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: out[p] = 'absent'\n"
        "print(json.dumps(out))\n"
    )
    if python is None:
        out = {"python": platform.python_version()}
        for p in packages:
            try:
                out[p] = importlib.metadata.version(p)
            except importlib.metadata.PackageNotFoundError:
                out[p] = "absent"
        return out
    done = subprocess.run(
        [python, "-c", code, *packages], capture_output=True, text=True, check=True
    )
    return dict(json.loads(done.stdout))


def git_commit(ignore: Path | None = None) -> str:
    """The short commit, with '+dirty' when tracked files differ from it; changes under
    ``ignore`` (the report's own folder, rewritten by the run) do not count."""
    spec = ["--", "."]
    if ignore is not None:
        spec.append(f":(exclude){os.path.relpath(ignore.resolve(), REPO)}")
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
            check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", *spec], cwd=REPO,
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return head + ("+dirty" if dirty else "")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
