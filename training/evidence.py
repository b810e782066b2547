"""The evidence a result carries: the hardware it ran on, the library versions and the git commit.

One module for every job (and for bench/run.py), so that reports name their machine the same way.
It imports no torch at module level: a job that never loads torch (STRIP calibration, the
benchmark) can record its evidence without paying for the import; `hardware()` imports torch
only when asked for the torch threads.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

# What the offline pipeline's reports list, in this order.
TRAINING_PACKAGES = ("torch", "onnx", "onnxruntime", "numpy")
# What an ONNX-Runtime-only job (STRIP calibration, detection reports) lists.
ONNX_PACKAGES = ("numpy", "onnxruntime")


def cpu_model(unknown: str = "unknown CPU") -> str:
    """The CPU's model name from /proc/cpuinfo, else `unknown`."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return unknown


def hardware() -> str:
    """The machine a torch job ran on: CPU, cores, torch threads, architecture, GPU or none."""
    import torch  # only here: the module stays importable without torch

    gpu = "CUDA GPU" if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu_model()} ({os.cpu_count()} CPU cores), {torch.get_num_threads()} torch threads, "
        f"{platform.machine()}, {gpu}"
    )


def onnx_hardware(threads: int) -> str:
    """The machine an ONNX Runtime job ran on, with its intra-op threads (0: the default)."""
    return (
        f"{cpu_model()} ({os.cpu_count()} CPU cores), ONNX Runtime CPU, "
        f"{threads or 'default'} intra-op threads, {platform.machine()}"
    )


def machine() -> dict[str, object]:
    """The machine as fields (the benchmark's JSON): CPU, cores, usable cores, memory, platform."""
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu": cpu_model("unknown"),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gib": memory,
        "gpu": "none",
        "platform": platform.platform(),
    }


_VERSIONS = (
    "import importlib.metadata as m, json, platform, sys\n"
    "out = {'python': platform.python_version()}\n"
    "for p in sys.argv[1:]:\n"
    "    try: out[p] = m.version(p)\n"
    "    except m.PackageNotFoundError: out[p] = 'absent'\n"
    "print(json.dumps(out))\n"
)


def versions(
    packages: Sequence[str] = TRAINING_PACKAGES, python: str | None = None
) -> dict[str, str]:
    """{"python": ..., package: installed version or "absent", ...} in the order given, of this
    interpreter or of ``python`` (another venv's, e.g. the benchmark's MLServer)."""
    if python is not None:
        done = subprocess.run(
            [python, "-c", _VERSIONS, *packages], capture_output=True, text=True, check=True
        )
        return dict(json.loads(done.stdout))
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def git_commit(repo: Path | str = ".", ignore: Path | None = None) -> str:
    """The short commit of HEAD in `repo`, or a note when there is none. With ``ignore`` (a
    folder the run itself rewrites, e.g. the benchmark's report), '+dirty' marks other tracked
    files that differ from the commit."""
    git = ["git", "-C", str(repo)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        if ignore is None:
            return head
        spec = [".", f":(exclude){os.path.relpath(ignore.resolve(), Path(repo).resolve())}"]
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no", "--", *spec],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "none (uncommitted tree)"
    return head + ("+dirty" if dirty else "")


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
