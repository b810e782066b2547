"""The dashboard and the alert rules against the running service.

A real uvicorn serves the tiny model sets in local mode and answers clean, triggered and
broken images; a second one runs the tiny set in proxy mode with the first as its upstream
(a V2 server that speaks binary tensor data), and the STRIP set locally, and answers clean and
triggered images with both detectors. Then:
every metric the dashboard and the rules use appears in the union of their /metrics scrapes,
with the labels they group by; and a real Prometheus, scraping both and loading the alert
rules, answers every dashboard query with data and evaluates every rule without error.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.promql import (
    RULE_FILES,
    dashboard_exprs,
    grouping_labels,
    metric_names,
    rule_exprs,
    substitute,
)
from tests.support.prometheus import RunningPrometheus, prometheus_binary, run_prometheus
from tests.support.promtext import Samples, scrape, value
from tests.support.samples import load_samples
from tests.support.server import RunningServer, serve

pytestmark = pytest.mark.slow

# Labels Prometheus adds to every scraped series; the service does not export them.
TARGET_LABELS = {"job", "instance"}


@pytest.fixture(scope="module")
def proxy_server(
    guard_server: RunningServer, tiny_set: Path, strip_set: Path
) -> Iterator[RunningServer]:
    """A guard in proxy mode: the tiny set's target runs on the shared local-mode guard. It
    also serves the STRIP set locally, so that both detectors flag."""
    upstream = {"tiny": {"url": guard_server.url, "model": "tiny", "version": "1", "binary": True}}
    env = {
        "GUARD_UPSTREAMS": json.dumps(upstream),
        "GUARD_UPSTREAM_PROBE_INTERVAL_S": "0.5",
        "GUARD_INTRA_OP_THREADS": "1",
    }
    with serve([tiny_set, strip_set], env) as server:  # ready only once the upstream answers ready
        yield server


def _classify(server: RunningServer, model_dir: Path, **params: str) -> None:
    """Four clean and four triggered samples in one POST /classify; the triggered are flagged."""
    samples = load_samples(model_dir)
    chosen = [s for s in samples if not s.triggered][:4] + [s for s in samples if s.triggered][:4]
    files = [("images", (s.path.name, s.read(), "image/png")) for s in chosen]
    ok = httpx.post(server.url + "/classify", files=files, params=params, timeout=30)
    assert ok.status_code == 200, ok.text
    assert ok.json()["flagged"] >= 1  # the triggered ones


@pytest.fixture(scope="module")
def busy_servers(
    guard_server: RunningServer,
    proxy_server: RunningServer,
    tiny_set: Path,
) -> list[RunningServer]:
    """The shared guard after clean and triggered images (to tiny, class_change, and tinykl, a
    score rule) and one broken upload; the proxy guard in front of it after clean and
    triggered images, and the STRIP set's, judged by STRIP and by the AE."""
    _classify(guard_server, tiny_set)
    _classify(guard_server, tiny_set, model="tinykl")  # the sets share shape and samples
    bad = httpx.post(
        guard_server.url + "/classify",
        files=[("images", ("x.png", b"not a png", "image/png"))],
        timeout=30,
    )
    assert bad.status_code == 422
    _classify(proxy_server, tiny_set)
    _classify(proxy_server, tiny_set, model="tinystrip", detector="strip", mode="block")
    _classify(proxy_server, tiny_set, model="tinystrip", detector="detrigger")
    # The proxy's verdict came from the upstream: one call answered, and it is ready.
    proxied = scrape(proxy_server.url)
    ok_calls = value(
        proxied, "guard_upstream_request_duration_seconds_count", model="tiny", outcome="ok"
    )
    assert ok_calls >= 1
    assert value(proxied, "guard_upstream_ready", model="tiny") == 1.0
    return [guard_server, proxy_server]


def _scrape_all(servers: list[RunningServer]) -> Samples:
    """The union of the servers' scrapes; a series both export counts once."""
    out: Samples = {}
    for server in servers:
        out.update(scrape(server.url))
    return out


def _used_metrics() -> set[str]:
    exprs = [*dashboard_exprs().values(), *rule_exprs().values()]
    return set().union(*map(metric_names, exprs)) - {"up"}  # `up` is Prometheus' own


def test_every_metric_used_appears_in_a_live_scrape(busy_servers: list[RunningServer]) -> None:
    scraped = {name for name, _ in _scrape_all(busy_servers)}
    used = _used_metrics()
    assert len(used) >= 10
    assert used - scraped == set(), "metrics the dashboard or rules use but the service lacks"


def test_grouping_labels_exist_on_the_scraped_series(busy_servers: list[RunningServer]) -> None:
    labels_of: dict[str, set[str]] = {}
    for name, labels in _scrape_all(busy_servers):
        labels_of.setdefault(name, set()).update(k for k, _ in labels)
    for title, expr in {**dashboard_exprs(), **rule_exprs()}.items():
        have = set(TARGET_LABELS)
        for metric in metric_names(expr) - {"up"}:
            have |= labels_of.get(metric, set())
        assert grouping_labels(expr) - have == set(), title


@pytest.fixture(scope="module")
def prometheus(busy_servers: list[RunningServer]) -> Iterator[RunningPrometheus]:
    """A real Prometheus scraping both guards every second, with the alert rules loaded."""
    if prometheus_binary() is None:
        pytest.fail("prometheus not found: apt-get install prometheus (.ci/run does)")
    rule_files = "rule_files:\n" + "".join(f"  - {p}\n" for p in RULE_FILES)
    urls = [s.url for s in busy_servers]
    with run_prometheus(urls, job="detrigger-guard", extra_config=rule_files) as prom:
        # Every target up for at least 3 scrapes, so that rate() over the dashboard's windows
        # has data on each.
        both = prom.wait_for(
            'count(sum_over_time(up{job="detrigger-guard"}[1m]) >= 3)', float(len(urls))
        )
        assert both == len(urls), prom.log_path.read_text()[-3000:]
        yield prom


def _now(expr: str) -> str:
    """The query as it reads now: a Prometheus a minute old has no data 5 minutes back, so the
    baseline's `offset 5m` (the alert's, drawn by a panel) is dropped for this check."""
    return re.sub(r"\s+offset\s+\d+[smhd]", "", substitute(expr))


def test_prometheus_answers_every_dashboard_query_with_data(prometheus: RunningPrometheus) -> None:
    empty = [title for title, expr in dashboard_exprs().items() if not prometheus.query(_now(expr))]
    assert empty == [], "panels with no data from a live guard"


def _label_values(prometheus: RunningPrometheus, expr: str, label: str) -> set[str]:
    return {r["metric"].get(label, "") for r in prometheus.query(_now(expr))}


def test_detector_class_and_score_panels_split_as_they_say(prometheus: RunningPrometheus) -> None:
    """After mixed traffic the per-detector panels show both detectors, the per-class ones
    several classes, and the score panel a threshold for each score rule's set."""
    exprs = dashboard_exprs()
    assert _label_values(prometheus, exprs["Flag rate by detector [A]"], "detector") == {
        "detrigger",
        "strip",
    }
    assert (
        len(_label_values(prometheus, exprs["Images by predicted class [A]"], "predicted_class"))
        > 1
    )
    thresholds = exprs["Score p50 / p95 / p99 against the threshold [T]"]
    assert _label_values(prometheus, thresholds, "model") == {"tinykl", "tinystrip"}
    p99 = exprs["Score p50 / p95 / p99 against the threshold [C]"]
    assert {"tiny", "tinykl", "tinystrip"} <= _label_values(prometheus, p99, "model")


def test_prometheus_evaluates_every_alert_rule(prometheus: RunningPrometheus) -> None:
    deadline = time.monotonic() + 20
    while True:  # rules are evaluated once a second; wait for one round
        groups = httpx.get(f"{prometheus.url}/api/v1/rules").json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        evaluated = all(r.get("lastEvaluation", "").startswith("20") for r in rules)
        if (rules and evaluated) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {r["name"] for r in rules} == set(rule_exprs())
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
