"""`detrigger-guard serve`, `classify` and `audit` for real: the installed command group, a real
uvicorn, a real HTTP client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from cli.main import main
from tests.support.server import free_port, serve
from tests.support.tiny_models import TinySpec, add_trigger, clean_image, png_bytes

SPEC = TinySpec()


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    clean, triggered = tmp_path / "clean.png", tmp_path / "triggered.png"
    clean.write_bytes(png_bytes(clean_image(SPEC, 4)))
    triggered.write_bytes(png_bytes(add_trigger(clean_image(SPEC, 4))))
    return [clean, triggered]


@pytest.mark.slow
def test_serve_runs_the_guard_on_the_given_sets(tiny_set: Path, rgb_set: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "cli.main", "serve", str(tiny_set), str(rgb_set),
               "--port", str(port), "--mode", "block"]  # fmt: skip
    env = {**os.environ, "GUARD_GRPC_PORT": "0"}  # REST only here: 8001 may be taken
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        models = httpx.get(url + "/v1/models").json()["models"]
        assert [m["name"] for m in models] == ["tiny", "tinyrgb"]
        assert models[0]["default"] is True
        trig = png_bytes(add_trigger(clean_image(SPEC, 2)))
        r = httpx.post(url + "/classify", files=[("images", ("t.png", trig, "image/png"))])
        assert r.json()["mode"] == "block" and r.json()["blocked"] == 1  # --mode block
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=20)
    # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly
    assert process.returncode in (0, -signal.SIGTERM), out.decode()[-2000:]
    assert b"Application shutdown complete." in out


@pytest.mark.slow
def test_classify_prints_one_line_per_image(tiny_set: Path, images: list[Path]) -> None:
    with serve([tiny_set]) as server:
        runner = CliRunner()
        result = runner.invoke(main, ["classify", *map(str, images), "--url", server.url])
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert lines[0].startswith("clean.png: clean (predicted class4")
        assert lines[1].startswith("triggered.png: FLAGGED (predicted class0")
        assert lines[-1] == "1 of 2 flagged by detrigger on tiny in mode flag"
        raw = runner.invoke(main, ["classify", str(images[1]), "--url", server.url, "--json",
                                   "--mode", "repair"])  # fmt: skip
        answer = json.loads(raw.output)
        assert answer["results"][0]["answer"]["class"] == 4  # repaired: the clean class
        refused = runner.invoke(main, ["classify", str(images[0]), "--url", server.url,
                                       "--model", "nope"])  # fmt: skip
        assert refused.exit_code == 1 and "404 unknown_model" in refused.output


def test_classify_says_when_the_guard_is_not_there(images: list[Path]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(main, ["classify", str(images[0]), "--url", url])
    assert result.exit_code == 2 and "cannot reach the guard" in result.output


def test_audit_passes_its_options_to_the_audit(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["audit", "--help"])
    assert result.exit_code == 0 and "--model-set" in result.output and "--dataset" in result.output
    missing = CliRunner().invoke(main, ["audit", "--model-set", str(tmp_path / "none")])
    assert missing.exit_code != 0
