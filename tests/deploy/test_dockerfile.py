"""Static checks of the Dockerfile's promises; `make docker-smoke` builds and runs it for real."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.deploy.promql import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()
REQUIREMENTS = REPO / "deploy" / "docker" / "runtime_requirements.py"


def stages() -> dict[str, list[str]]:
    """Stage name -> its instruction lines (continuations joined), in file order."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.I)
        if match:
            current = match.group(2)
            out[current] = [line]
        elif current:
            out[current].append(line)
    return out


def test_gpu_is_the_default_target_and_cpu_exists() -> None:
    names = list(stages())
    assert names[-1] == "gpu"  # `docker build .` builds the last stage
    assert "cpu" in names


def test_base_images_are_build_arguments() -> None:
    bases = [lines[0].split()[1] for lines in stages().values()]
    external = [b for b in bases if b not in stages()]
    assert external and all(b.startswith("${") for b in external)
    assert re.search(r"^ARG CUDA_BASE_IMAGE=nvidia/cuda:\S+cudnn-runtime", DOCKERFILE, re.M)


@pytest.mark.parametrize("stage", ["cpu", "gpu"])
def test_final_stages_run_as_non_root_with_a_healthcheck_and_the_models(stage: str) -> None:
    lines = stages()[stage]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and not users[-1].startswith(("0", "root"))
    (health,) = [line for line in lines if line.startswith("HEALTHCHECK")]
    assert "/healthz" in health
    assert any(line.startswith("COPY models/") for line in lines)
    assert any(line.startswith("CMD") and "service.main:app" in line for line in lines)


def test_extra_ca_is_a_build_secret_never_copied() -> None:
    assert "--mount=type=secret,id=extra_ca" in DOCKERFILE
    copies = [line for lines in stages().values() for line in lines if line.startswith("COPY")]
    assert not any(re.search(r"\.(pem|crt)\b|ca-cert", line) for line in copies)


def test_build_context_leaves_out_training_and_the_venv() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # deny everything, then allow what the Dockerfile copies
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert {"service", "models", "pyproject.toml"} <= allowed
    assert not {"training", ".venv", "tests"} & allowed


@pytest.mark.parametrize("ort", ["onnxruntime", "onnxruntime-gpu"])
def test_image_requirements_are_the_runtime_dependencies_without_torch(ort: str) -> None:
    result = subprocess.run(
        [sys.executable, str(REQUIREMENTS), str(REPO / "pyproject.toml"), "--onnxruntime", ort],
        capture_output=True,
        text=True,
        check=True,
    )
    reqs = result.stdout.split()
    names = {re.match(r"[A-Za-z0-9._-]+", r).group(0).lower() for r in reqs}
    pyproject = (REPO / "pyproject.toml").read_text()
    # Every other line is a runtime dependency exactly as pyproject.toml declares it.
    assert all(f'"{r}"' in pyproject for r in reqs if not r.startswith(ort))
    assert "torch" not in names
    assert ort in names
    (other,) = {"onnxruntime", "onnxruntime-gpu"} - {ort}
    assert other not in names


def _requirements(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REQUIREMENTS), str(REPO / "pyproject.toml"), *args],
        capture_output=True,
        text=True,
    )


def test_images_install_the_tracing_and_s3_extras() -> None:
    """Both dependency stages pass IMAGE_EXTRAS, by default tracing and s3, to the script."""
    for stage in ("cpu-deps", "gpu-deps"):
        text = "\n".join(stages()[stage])
        assert 'ARG IMAGE_EXTRAS="tracing s3"' in text, stage
        assert '--extras "$IMAGE_EXTRAS"' in text, stage
    result = _requirements("--extras", "tracing s3")
    assert result.returncode == 0, result.stderr
    names = {re.match(r"[A-Za-z0-9._-]+", r).group(0).lower() for r in result.stdout.split()}
    assert {"opentelemetry-sdk", "opentelemetry-exporter-otlp", "boto3"} <= names
    assert "torch" not in names


@pytest.mark.parametrize("extra", ["train", "dev", "nonsense"])
def test_images_refuse_the_training_and_dev_extras(extra: str) -> None:
    result = _requirements("--extras", extra)
    assert result.returncode != 0 and "not a service extra" in result.stderr
