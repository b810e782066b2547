"""training.evidence: one place for the machine, the versions and the commit a result names."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

from training import evidence

REPO = Path(__file__).resolve().parents[2]


def test_importing_it_loads_no_torch() -> None:
    code = "import sys, training.evidence; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_versions_list_python_then_the_packages_in_order() -> None:
    got = evidence.versions(("numpy", "onnxruntime", "no-such-package-xyz"))
    assert list(got) == ["python", "numpy", "onnxruntime", "no-such-package-xyz"]
    assert got["python"] == platform.python_version()
    assert got["no-such-package-xyz"] == "absent"
    assert list(evidence.versions()) == ["python", "torch", "onnx", "onnxruntime", "numpy"]


def test_hardware_lines_name_cores_threads_and_machine() -> None:
    line = evidence.hardware()
    assert "CPU cores" in line and "torch threads" in line and platform.machine() in line
    onnx = evidence.onnx_hardware(0)
    assert "ONNX Runtime CPU, default intra-op threads" in onnx
    assert "3 intra-op threads" in evidence.onnx_hardware(3)


def test_git_commit_outside_a_repository_says_so(tmp_path: Path) -> None:
    assert evidence.git_commit(tmp_path) == "none (uncommitted tree)"
    assert evidence.git_commit(REPO) != ""
