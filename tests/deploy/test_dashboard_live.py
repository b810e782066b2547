"""The dashboard and the alert rules against the running service.

A real uvicorn serves the tiny model sets and answers clean, triggered and broken images.
Then: every metric the dashboard and the rules use appears in its /metrics scrape, with the
labels they group by; and a real Prometheus, scraping it and loading the alert rules,
answers every dashboard query with data and evaluates every rule without error.
"""

from __future__ import annotations

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
from tests.support.promtext import scrape
from tests.support.samples import load_samples
from tests.support.server import RunningServer

pytestmark = pytest.mark.slow

# Labels Prometheus adds to every scraped series; the service does not export them.
TARGET_LABELS = {"job", "instance"}


@pytest.fixture(scope="module")
def busy_server(guard_server: RunningServer, tiny_set: Path) -> RunningServer:
    """The shared guard after clean and triggered images and one broken upload."""
    samples = load_samples(tiny_set)
    chosen = [s for s in samples if not s.triggered][:4] + [s for s in samples if s.triggered][:4]
    files = [("images", (s.path.name, s.read(), "image/png")) for s in chosen]
    with httpx.Client(base_url=guard_server.url, timeout=30) as client:
        ok = client.post("/classify", files=files)
        assert ok.status_code == 200, ok.text
        assert ok.json()["flagged"] >= 1  # the triggered ones
        bad = client.post("/classify", files=[("images", ("x.png", b"not a png", "image/png"))])
        assert bad.status_code == 422
    return guard_server


def _used_metrics() -> set[str]:
    exprs = [*dashboard_exprs().values(), *rule_exprs().values()]
    return set().union(*map(metric_names, exprs)) - {"up"}  # `up` is Prometheus' own


def test_every_metric_used_appears_in_a_live_scrape(busy_server: RunningServer) -> None:
    scraped = {name for name, _ in scrape(busy_server.url)}
    used = _used_metrics()
    assert len(used) >= 10
    assert used - scraped == set(), "metrics the dashboard or rules use but the service lacks"


def test_grouping_labels_exist_on_the_scraped_series(busy_server: RunningServer) -> None:
    labels_of: dict[str, set[str]] = {}
    for name, labels in scrape(busy_server.url):
        labels_of.setdefault(name, set()).update(k for k, _ in labels)
    for title, expr in {**dashboard_exprs(), **rule_exprs()}.items():
        have = set(TARGET_LABELS)
        for metric in metric_names(expr) - {"up"}:
            have |= labels_of.get(metric, set())
        assert grouping_labels(expr) - have == set(), title


@pytest.fixture(scope="module")
def prometheus(busy_server: RunningServer) -> Iterator[RunningPrometheus]:
    """A real Prometheus scraping the guard every second, with the alert rules loaded."""
    if prometheus_binary() is None:
        pytest.fail("prometheus not found: apt-get install prometheus (.ci/run does)")
    rule_files = "rule_files:\n" + "".join(f"  - {p}\n" for p in RULE_FILES)
    with run_prometheus([busy_server.url], job="detrigger-guard", extra_config=rule_files) as prom:
        # At least 3 scrapes, so that rate() over the dashboard's windows has data.
        scrapes = prom.wait_for('count_over_time(up{job="detrigger-guard"}[1m]) >= bool 3', 1.0)
        assert scrapes == 1.0, prom.log_path.read_text()[-3000:]
        yield prom


def test_prometheus_answers_every_dashboard_query_with_data(prometheus: RunningPrometheus) -> None:
    empty = [
        title for title, expr in dashboard_exprs().items() if not prometheus.query(substitute(expr))
    ]
    assert empty == [], "panels with no data from a live guard"


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
