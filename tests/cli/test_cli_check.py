"""`detrigger-guard check` and the command group's edges: a shipped set passes, a tampered one
fails naming the file; --help works without torch, and fit without torch says what to install."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
from click.testing import CliRunner

from cli.main import main
from tests.support.tiny_models import TinySpec, sha256_of, target_graph

REPO = Path(__file__).resolve().parents[2]


def test_a_shipped_set_passes_every_check() -> None:
    result = CliRunner().invoke(main, ["check", str(REPO / "models" / "mnist")])
    assert result.exit_code == 0, result.output
    assert "the service loads it" in result.output and "1 model set(s) pass" in result.output


def test_a_tampered_set_fails_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "mnist"
    shutil.copytree(REPO / "models" / "mnist", bad)
    with open(bad / "detrigger.onnx", "ab") as f:
        f.write(b"\0")
    result = CliRunner().invoke(main, ["check", str(bad)])
    assert result.exit_code == 1
    assert "detrigger.onnx: sha256 mismatch" in result.output


def test_a_shipped_set_checks_detector_both_and_refuses_a_stale_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["check", str(REPO / "models" / "mnist")])
    assert "detector both runs on a batch, calibrated with these graphs" in result.output
    # The STRIP entry recalibrated with another n, the fused thresholds left as they were.
    stale = tmp_path / "mnist"
    shutil.copytree(REPO / "models" / "mnist", stale)
    manifest = json.loads((stale / "manifest.json").read_text())
    manifest["detectors"]["strip"]["n"] = 8
    (stale / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["check", str(stale)])
    assert result.exit_code == 1
    assert "detectors.both was calibrated with another strip_n" in result.output


def test_a_manifest_with_wrong_graph_names_fails(tmp_path: Path) -> None:
    bad = tmp_path / "mnist"
    shutil.copytree(REPO / "models" / "mnist", bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["target"]["output_name"] = "probs"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["check", str(bad)])
    assert result.exit_code == 1 and "target.output_name is 'probs'" in result.output


def test_a_repaired_graph_is_checked_like_the_others(tmp_path: Path, repaired_set: Path) -> None:
    result = CliRunner().invoke(main, ["check", str(repaired_set)])
    assert result.exit_code == 0, result.output
    assert "target.onnx, detrigger.onnx, repaired.onnx: sha256 as the manifest says" in (
        result.output
    )
    assert "runs the 3 graphs on a batch of 3" in result.output
    assert "detectors detrigger, repaired" in result.output
    # A repaired graph over other classes than the target's is refused, naming the file.
    bad = tmp_path / "tinyrepaired"
    shutil.copytree(repaired_set, bad)
    onnx.save(target_graph(TinySpec(classes=5), repaired=True), bad / "repaired.onnx")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["detectors"]["repaired"]["sha256"] = sha256_of(bad / "repaired.onnx")
    (bad / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["check", str(bad)])
    assert result.exit_code == 1
    assert "repaired.onnx: output (3, 5); expected (3, 10), one row of logits" in result.output


NO_TORCH = (
    "import sys; sys.modules['torch'] = None\n"
    "from cli.main import main\n"
    "sys.argv = ['detrigger-guard', *sys.argv[1:]]\n"
    "main()\n"
)


def run_without_torch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": ""},
    )


def test_help_and_check_need_no_torch() -> None:
    for args in (["--help"], ["check", "--help"], ["fit", "--help"]):
        done = run_without_torch(*args)
        assert done.returncode == 0, done.stderr
        assert "Usage: detrigger-guard" in done.stdout
    done = run_without_torch("check", str(REPO / "models" / "mnist"))
    assert done.returncode == 0, done.stderr


def test_fit_without_torch_says_what_to_install(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    done = run_without_torch("fit", "--target", str(model), "--data", "x", "--out", "y")
    assert done.returncode != 0
    assert "pip install 'detrigger-guard[train]'" in done.stderr


def test_a_shipped_set_checks_detrigger_or_repaired_and_refuses_a_stale_one(
    tmp_path: Path,
) -> None:
    result = CliRunner().invoke(main, ["check", str(REPO / "models" / "mnist")])
    assert "detector detrigger_or_repaired decides on a batch, calibrated with these graphs" in (
        result.output
    )
    # The repaired graph's score switched to kl, the fused thresholds left as they were.
    stale = tmp_path / "mnist"
    shutil.copytree(REPO / "models" / "mnist", stale)
    manifest = json.loads((stale / "manifest.json").read_text())
    manifest["detectors"]["repaired"]["score"] = "kl"
    (stale / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["check", str(stale)])
    assert result.exit_code == 1
    assert "detectors.detrigger_or_repaired was calibrated with another repaired_score" in (
        result.output
    )
