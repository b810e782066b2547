"""deploy/docker/with-extra-ca.sh: the build step trusts the extra CA while it runs, and the
combined bundle is gone afterwards (so no layer keeps it)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.deploy.promql import REPO

SCRIPT = REPO / "deploy" / "docker" / "with-extra-ca.sh"
MARKER = "-----BEGIN CERTIFICATE-----\nEXTRA-CA-MARKER\n-----END CERTIFICATE-----\n"


def run(secrets: Path, command: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "APT_", "SSL_CERT"))}
    env["SECRETS_DIR"] = str(secrets)
    return subprocess.run(
        ["sh", str(SCRIPT), "sh", "-c", command], capture_output=True, text=True, env=env
    )


def test_the_step_sees_a_bundle_with_the_extra_ca_and_it_is_removed(tmp_path: Path) -> None:
    (tmp_path / "extra_ca").write_text(MARKER)
    out = run(tmp_path, 'echo "$PIP_CERT"; cat "$PIP_CERT"; cat "$APT_CONFIG"')
    assert out.returncode == 0, out.stderr
    bundle = out.stdout.splitlines()[0]
    assert "EXTRA-CA-MARKER" in out.stdout
    assert f'Acquire::https::CAInfo "{bundle}";' in out.stdout
    assert not Path(bundle).exists()


def test_without_the_secret_nothing_changes(tmp_path: Path) -> None:
    out = run(tmp_path, 'echo "pip_cert=${PIP_CERT:-unset} apt=${APT_CONFIG:-unset}"')
    assert out.stdout.strip() == "pip_cert=unset apt=unset"


def test_pip_configuration_secret_is_used(tmp_path: Path) -> None:
    (tmp_path / "pip_conf").write_text("[global]\nindex-url = https://mirror.example/simple\n")
    out = run(tmp_path, 'echo "$PIP_CONFIG_FILE"')
    assert out.stdout.strip() == str(tmp_path / "pip_conf")


def test_the_step_status_is_kept(tmp_path: Path) -> None:
    (tmp_path / "extra_ca").write_text(MARKER)
    assert run(tmp_path, "exit 3").returncode == 3
