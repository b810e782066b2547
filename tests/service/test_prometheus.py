"""A real Prometheus scrapes the real guard on loopback; PromQL sees the flagged count."""

import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support.prometheus import run_prometheus
from tests.support.server import RunningServer, serve
from tests.support.tiny_models import TinySpec, add_trigger, clean_image, png_bytes

pytestmark = pytest.mark.slow


def test_prometheus_scrapes_the_flagged_count(tiny_set: Path) -> None:
    spec = TinySpec()
    with serve([tiny_set]) as server, run_prometheus([server.url]) as prom:
        assert prom.wait_for('up{job="guard"}', 1.0) == 1.0
        clean = [png_bytes(clean_image(spec, 1 + i % 9, seed=i)) for i in range(7)]
        trig = [png_bytes(add_trigger(clean_image(spec, 1 + i % 9, seed=i))) for i in range(5)]
        files = [("images", (f"{i}.png", d, "image/png")) for i, d in enumerate(clean + trig)]
        assert httpx.post(server.url + "/classify", files=files).status_code == 200

        flagged = prom.wait_for('sum(guard_images_flagged_total{job="guard",model="tiny"})', 5.0)
        assert flagged == 5.0
        assert prom.scalar('sum(guard_images_total{model="tiny"})') == 12.0
        assert prom.scalar('guard_images_flagged_total{model="tiny",predicted_class="0"}') == 5.0
        assert prom.scalar('guard_model_info{model="tiny",provider="CPUExecutionProvider"}') == 1.0
        assert (
            prom.scalar('sum(guard_http_requests_total{route="/classify",status_class="2xx"})')
            == 1.0
        )
        # The flag ratio of docs/metrics.md: every series starts at 0 when the set loads and all
        # are scraped together, so the ratio of the rates is exactly flagged / classified.
        ratio = prom.scalar(
            "sum(rate(guard_images_flagged_total[5m])) / sum(rate(guard_images_total[5m]))"
        )
        assert ratio is not None and abs(ratio - 5 / 12) < 1e-9, ratio


def test_promtool_finds_no_naming_problems(guard_server: RunningServer) -> None:
    files = [("images", ("a.png", png_bytes(clean_image(TinySpec(), 3)), "image/png"))]
    assert httpx.post(guard_server.url + "/classify", files=files).status_code == 200
    text = httpx.get(guard_server.url + "/metrics").text
    assert "guard_images_total" in text
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr
