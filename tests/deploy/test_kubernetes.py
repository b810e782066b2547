"""The Kubernetes manifests: rendered by the real kustomize (kubectl kustomize), validated
strictly against the Kubernetes API schemas (kubernetes-validate), and checked for what
the deployment promises (sidecar isolation, probes, resources, GPU, monitoring)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.settings import Settings
from tests.deploy.promql import DASHBOARD, REPO, alert_rules, check_parses, promtool

K8S = REPO / "deploy" / "k8s"
OVERLAYS = {
    "standalone": K8S / "base",
    "gpu": K8S / "overlays" / "gpu",
    "sidecar": K8S / "overlays" / "sidecar",
}
# The Kubernetes versions docs/deploy.md claims; kubernetes-validate ships their schemas.
K8S_VERSIONS = ("1.30.0", "1.37.0")


def kustomize(folder: Path) -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl not found (.ci/run installs it from the Kubernetes apt repository)")
    result = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def docs(name: str) -> dict[tuple[str, str], dict]:
    return {
        (d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(kustomize(OVERLAYS[name]))
    }


def validate(path: Path, version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_rendered_manifests_pass_strict_validation(name: str, version: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(kustomize(OVERLAYS[name]))
    result = validate(path, version)
    assert result.returncode == 0, result.stdout + result.stderr
    # Everything but the Prometheus Operator's CRDs has a schema and passed.
    passed = result.stdout.count(" passed for resource ")
    crds = sum(1 for d in yaml.safe_load_all(path.read_text()) if "coreos" in d["apiVersion"])
    assert passed == len(list(yaml.safe_load_all(path.read_text()))) - crds


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    """The check above can fail: a misspelt field in the Deployment is an error."""
    deployment = docs("standalone")[("Deployment", "detrigger-guard")]
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(deployment))
    assert validate(path, K8S_VERSIONS[-1]).returncode != 0


def _pod(name: str) -> dict:
    return docs(name)[("Deployment", "detrigger-guard")]["spec"]["template"]


def _container(pod: dict, name: str) -> dict:
    (c,) = [c for c in pod["spec"]["containers"] if c["name"] == name]
    return c


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_guard_has_probes_resources_and_runs_as_non_root(name: str) -> None:
    pod = _pod(name)
    guard = _container(pod, "guard")
    assert guard["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert guard["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(guard["resources"][kind])
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert guard["securityContext"]["readOnlyRootFilesystem"] is True


def test_gpu_variant_requests_a_gpu_and_prefers_cuda() -> None:
    guard = _container(_pod("gpu"), "guard")
    assert guard["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert guard["image"].endswith(":gpu")
    env = {e["name"]: e.get("value") for e in guard["env"]}
    assert env["GUARD_PROVIDERS"].startswith("CUDAExecutionProvider")
    assert "nvidia.com/gpu" not in _container(_pod("standalone"), "guard")["resources"]["limits"]


def test_sidecar_model_server_is_reachable_only_through_the_guard() -> None:
    objs = docs("sidecar")
    pod = _pod("sidecar")
    server = _container(pod, "model-server")
    guard = _container(pod, "guard")
    # The model server declares no port and binds loopback only.
    assert "ports" not in server
    addresses = [
        a.split("=", 1)[1] for a in server["args"] if a.startswith("--") and "-address=" in a
    ]
    assert addresses and set(addresses) == {"127.0.0.1"}
    # The Service exposes the guard's named port, nothing else.
    service = objs[("Service", "detrigger-guard")]
    guard_ports = {p["name"]: p["containerPort"] for p in guard["ports"]}
    assert [p["targetPort"] for p in service["spec"]["ports"]] == list(guard_ports)
    # The NetworkPolicy admits only the guard's port to the pod.
    policy = objs[("NetworkPolicy", "detrigger-guard-only")]
    (rule,) = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == list(guard_ports.values())
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()


def test_sidecar_guard_proxies_to_the_model_server_in_its_pod(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The guard's settings, read from the pod's env as the service reads them, send the set
    it serves to the model Triton loads, on Triton's loopback HTTP port, as binary data."""
    pod = _pod("sidecar")
    guard = _container(pod, "guard")
    for e in guard["env"]:
        if "value" in e:
            monkeypatch.setenv(e["name"], e["value"])
    settings = Settings()
    triton = dict(
        a.removeprefix("--").split("=", 1)
        for a in _container(pod, "model-server")["args"]
        if a.startswith("--")
    )
    (upstream,) = settings.upstreams.values()
    assert [Path(m).name for m in settings.models] == list(settings.upstreams) == ["mnist"]
    assert upstream.url == f"http://{triton['http-address']}:{triton['http-port']}"
    assert triton["model-control-mode"] == "explicit"
    assert (upstream.model, upstream.version) == (triton["load-model"], "1")
    assert upstream.binary  # Triton speaks the binary tensor data extension
    assert settings.upstream_connect_timeout_s == 0.5
    assert settings.upstream_read_timeout_s == 10
    assert settings.upstream_forward_headers == ["traceparent", "tracestate", "baggage"]
    # Readiness includes the upstream: /readyz, not /healthz.
    assert guard["readinessProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_pod_monitor_scrapes_the_guard_as_job_detrigger_guard(name: str) -> None:
    objs = docs(name)
    monitor = objs[("PodMonitor", "detrigger-guard")]
    pod = _pod(name)
    labels = pod["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # The alert rules select job="detrigger-guard".
    assert labels[monitor["spec"]["jobLabel"]] == "detrigger-guard"
    port_names = {p["name"] for p in _container(pod, "guard")["ports"]}
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= port_names
    assert monitor["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"


def test_hpa_scales_the_guard_deployment() -> None:
    objs = docs("standalone")
    hpa = objs[("HorizontalPodAutoscaler", "detrigger-guard")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "detrigger-guard"
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_dashboard_configmap_holds_the_dashboard() -> None:
    cm = docs("standalone")[("ConfigMap", "detrigger-guard-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"][DASHBOARD.name]) == json.loads(DASHBOARD.read_text())


def test_prometheus_rule_holds_the_alert_rules_and_passes_promtool(tmp_path: Path) -> None:
    rule = docs("standalone")[("PrometheusRule", "detrigger-guard")]
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert alerts == alert_rules()
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert check_parses({a["alert"]: a["expr"] for a in alerts}, tmp_path).returncode == 0
