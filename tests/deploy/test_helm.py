"""The Helm chart (deploy/helm/detrigger-guard): `helm lint --strict`, `helm template` with the
defaults and each example values file, every render validated strictly for the Kubernetes
versions the kustomize test uses, and the default render held to what `kubectl kustomize
deploy/k8s/base` renders. Needs the helm binary (deploy/helm/install-helm.sh; .ci/run
installs it): without it the tests skip and say so."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.promql import REPO
from tests.deploy.test_kubernetes import K8S_VERSIONS, docs, validate

CHART = REPO / "deploy" / "helm" / "detrigger-guard"
EXAMPLES = sorted((REPO / "deploy" / "helm" / "examples").glob("*.yaml"))
VALUE_SETS = {"default": None, **{p.stem: p for p in EXAMPLES}}
TRT_FIRST = "TensorrtExecutionProvider\\,CUDAExecutionProvider\\,CPUExecutionProvider"


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("helm")
    if binary is None:
        pytest.skip("helm not found: deploy/helm/install-helm.sh installs it (.ci/run runs it)")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


def render(values: Path | None = None, *sets: str) -> str:
    args = ["template", "detrigger-guard", str(CHART), "--namespace", "guard"]
    if values is not None:
        args += ["-f", str(values)]
    for s in sets:
        args += ["--set", s]
    result = helm(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def objects(text: str) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(text) if d}


def pod(text: str) -> dict:
    return objects(text)[("Deployment", "detrigger-guard")]["spec"]["template"]


def guard(spec: dict) -> dict:
    (container,) = [c for c in spec["spec"]["containers"] if c["name"] == "guard"]
    return container


def env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


def test_examples_are_found() -> None:
    assert {"gpu", "s3-quarantine", "folder-quarantine"} <= set(VALUE_SETS)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_strict_passes(name: str) -> None:
    values = VALUE_SETS[name]
    result = helm("lint", "--strict", str(CHART), *(["-f", str(values)] if values else []))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "bad",
    [
        "autoscaling.minReplicas=two",  # wrong type
        "quarantine.s3.endpointUrl=http://user:secret@minio:9000",  # credentials in a URL
        "providers=CUDAExecutionProvider",  # no CPU fallback
        "trtCache.dir=var/cache/trt",  # not an absolute path
    ],
)
def test_lint_rejects_bad_values(bad: str) -> None:
    result = helm("lint", "--strict", str(CHART), "--set", bad)
    assert result.returncode != 0, bad


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_chart_passes_strict_validation(name: str, version: str, tmp_path: Path) -> None:
    text = render(VALUE_SETS[name])
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    result = validate(path, version)
    assert result.returncode == 0, result.stdout + result.stderr
    rendered = [d for d in yaml.safe_load_all(text) if d]
    crds = sum(1 for d in rendered if "coreos" in d["apiVersion"])
    assert result.stdout.count(" passed for resource ") == len(rendered) - crds


def test_default_render_is_the_kustomize_base() -> None:
    """The same pod as `kubectl kustomize deploy/k8s/base` (probes, resources, security,
    env, volumes), the same HPA, rules and dashboard; plus the gRPC port."""
    chart, base = objects(render()), docs("standalone")
    assert {k for k, _ in chart} == {k for k, _ in base}
    ours, theirs = (
        guard(pod(render())),
        guard(base[("Deployment", "detrigger-guard")]["spec"]["template"]),
    )
    for field in ("livenessProbe", "readinessProbe", "startupProbe", "resources", "securityContext",
                  "volumeMounts"):  # fmt: skip
        assert ours[field] == theirs[field], field
    assert ours["image"] == theirs["image"]
    assert {k: v for k, v in env(ours).items() if k in env(theirs)} == env(theirs)
    base_pod = base[("Deployment", "detrigger-guard")]["spec"]["template"]["spec"]
    assert pod(render())["spec"]["securityContext"] == base_pod["securityContext"]
    assert pod(render())["spec"]["volumes"] == base_pod["volumes"]
    assert (
        chart[("HorizontalPodAutoscaler", "detrigger-guard")]["spec"]
        == (base[("HorizontalPodAutoscaler", "detrigger-guard")]["spec"])
    )
    assert (
        chart[("PrometheusRule", "detrigger-guard")]["spec"]
        == (base[("PrometheusRule", "detrigger-guard")]["spec"])
    )
    assert (
        chart[("ConfigMap", "detrigger-guard-dashboard")]["data"]
        == (base[("ConfigMap", "detrigger-guard-dashboard")]["data"])
    )
    # V2 over gRPC on 8001, beside REST on 8000, reachable from outside the pod.
    ports = {p["name"]: p["port"] for p in chart[("Service", "detrigger-guard")]["spec"]["ports"]}
    assert ports == {"http": 8000, "grpc": 8001}
    assert env(ours)["GUARD_GRPC_HOST"]["value"] == "0.0.0.0"


def test_pod_monitor_selects_the_release_and_keeps_the_job_name() -> None:
    chart = objects(render())
    monitor = chart[("PodMonitor", "detrigger-guard")]["spec"]
    labels = pod(render())["metadata"]["labels"]
    assert monitor["jobLabel"] == "app.kubernetes.io/name"
    assert labels["app.kubernetes.io/name"] == "detrigger-guard"  # job="detrigger-guard"
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    assert {e["port"] for e in monitor["podMetricsEndpoints"]} == {"http"}


def test_gpu_values_request_a_gpu_and_prefer_cuda() -> None:
    container = guard(pod(render(VALUE_SETS["gpu"])))
    assert container["image"].endswith(":gpu")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env(container)["GUARD_PROVIDERS"]["value"].startswith("CUDAExecutionProvider")


def test_trt_cache_values_mount_a_volume_of_the_pod_at_the_setting(tmp_path: Path) -> None:
    text = render(None, "trtCache.enabled=true", "providers=" + TRT_FIRST)
    path = tmp_path / "trt.yaml"
    path.write_text(text)
    result = validate(path, K8S_VERSIONS[-1])
    assert result.returncode == 0, result.stdout + result.stderr
    spec = pod(text)
    container = guard(spec)
    variables = env(container)
    assert variables["GUARD_PROVIDERS"]["value"] == TRT_FIRST.replace("\\", "")
    folder = variables["GUARD_TRT_CACHE_DIR"]["value"]
    assert folder == "/var/cache/guard/trt"
    assert {"name": "trt-cache", "mountPath": folder} in container["volumeMounts"]
    (volume,) = [v for v in spec["spec"]["volumes"] if v["name"] == "trt-cache"]
    assert volume["emptyDir"] == {"sizeLimit": "1Gi"}
    # Off by default: no variable, no volume.
    default = pod(render())
    assert "GUARD_TRT_CACHE_DIR" not in env(guard(default))
    assert all(v["name"] != "trt-cache" for v in default["spec"]["volumes"])


def test_s3_quarantine_values() -> None:
    text = render(VALUE_SETS["s3-quarantine"])
    chart = objects(text)
    spec = pod(text)
    variables = env(guard(spec))
    assert variables["GUARD_QUARANTINE_S3_URL"]["value"] == "s3://guard-forensics/mnist"
    assert variables["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "guard-s3"
    assert "GUARD_QUARANTINE_DIR" not in variables
    assert variables["GUARD_GRPC_PORT"]["value"] == "0"
    assert variables["GUARD_DEFAULT_MODE"]["value"] == "block"  # extra env
    assert not any(
        k[0] in ("PodMonitor", "PrometheusRule", "HorizontalPodAutoscaler") for k in chart
    )
    assert chart[("Deployment", "detrigger-guard")]["spec"]["replicas"] == 3
    (models,) = [v for v in spec["spec"]["volumes"] if v["name"] == "models"]
    assert models["persistentVolumeClaim"]["claimName"] == "guard-models"
    ports = {p["name"] for p in chart[("Service", "detrigger-guard")]["spec"]["ports"]}
    assert ports == {"http"}


def test_folder_quarantine_values_mount_a_writable_volume() -> None:
    text = render(VALUE_SETS["folder-quarantine"])
    spec = pod(text)
    container = guard(spec)
    folder = env(container)["GUARD_QUARANTINE_DIR"]["value"]
    assert {"name": "quarantine", "mountPath": folder} in container["volumeMounts"]
    assert spec["spec"]["securityContext"]["fsGroup"] == 10001
    assert spec["spec"]["serviceAccountName"] == "detrigger-guard"
    chart = objects(text)
    assert chart[("PodMonitor", "detrigger-guard")]["metadata"]["labels"]["release"] == (
        "kube-prometheus-stack"
    )


def test_a_release_name_prefixes_the_objects() -> None:
    result = helm("template", "canary", str(CHART))
    assert result.returncode == 0, result.stderr
    names = {name for _, name in objects(result.stdout)}
    assert "canary-detrigger-guard" in names
