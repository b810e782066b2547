"""What every training command shares: its usage line names the command as it is run, and a
folder that is not a model set ends in one clear line, not a traceback."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# module -> the command a user types (a package's __main__ runs as the package)
COMMANDS = {
    "training.train_target": "python -m training.train_target",
    "training.train_detrigger": "python -m training.train_detrigger",
    "training.reproduce": "python -m training.reproduce",
    "training.swap_detrigger": "python -m training.swap_detrigger",
    "training.suite": "python -m training.suite",
    "training.detection_report": "python -m training.detection_report",
    "training.detection_tables": "python -m training.detection_tables",
    "training.audit.__main__": "python -m training.audit",
    "training.audit.control": "python -m training.audit.control",
    "training.audit.families": "python -m training.audit.families",
    "training.audit.joint": "python -m training.audit.joint",
    "training.audit.report": "python -m training.audit.report",
    "training.audit.tune": "python -m training.audit.tune",
}


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_usage_names_the_command(module: str, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main()
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {COMMANDS[module]} ")
    assert "__main__.py" not in out


@pytest.mark.parametrize(
    "command",
    ["training.audit", "training.audit.tune", "training.audit.joint"],
)
def test_a_folder_without_a_manifest_is_refused_in_one_line(command: str, tmp_path: Path) -> None:
    (tmp_path / "target.onnx").write_bytes(b"")  # a folder that only looks like a set
    run = subprocess.run(
        [sys.executable, "-m", command, "--model-set", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert str(tmp_path) in lines[0] and "manifest.json" in lines[0]
