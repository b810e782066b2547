"""The Grafana dashboard for detrigger-guard, as code.

    python deploy/grafana/dashboard.py          # writes dashboards/detrigger-guard.json beside it
    python deploy/grafana/dashboard.py --check  # exits 1 if that file is not what this code makes

Only the metrics in docs/metrics.md (and Prometheus' own `up`) are queried. The
`$__rate_interval` and `$model` variables are Grafana's; tests substitute them before
parsing each expression with promtool.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OUT = Path(__file__).parent / "dashboards" / "detrigger-guard.json"
UID = "detrigger-guard"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Selectors every query carries, so the dashboard follows the template variables.
JOB = 'job="detrigger-guard"'
MODEL = 'model=~"$model"'
RATE = "$__rate_interval"
QUANTILES = (0.5, 0.95, 0.99)
# Kept equal to the GuardFlagRatioHigh threshold in deploy/prometheus/rules/guard-alerts.yml.
FLAG_RATIO_THRESHOLD = 0.05
WIDTH = 24  # Grafana's grid is 24 units wide
READY_MAPPING = [  # stat panels of 0/1 readiness gauges
    {
        "type": "value",
        "options": {
            "0": {"text": "not ready", "color": "red"},
            "1": {"text": "ready", "color": "green"},
        },
    }
]


def target(expr: str, legend: str, ref: str, instant: bool = False, table: bool = False) -> dict:
    t = {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref}
    if instant:
        t["instant"] = True
        t["range"] = False
    if table:
        t["format"] = "table"
    return t


def panel(kind: str, title: str, description: str, targets: list[dict], unit: str, **extra) -> dict:
    p = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
    }
    if kind == "timeseries":
        p["options"] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}
        }
    p.update(extra)
    return p


def row(title: str) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def quantile_targets(metric: str, by: str, selector: str) -> list[dict]:
    """p50 / p95 / p99 of a histogram, one series per value of the `by` label."""
    return [
        target(
            f"histogram_quantile({q}, sum by (le, {by}) "
            f"(rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"p{round(q * 100)} {{{{{by}}}}}",
            chr(ord("A") + i),
        )
        for i, q in enumerate(QUANTILES)
    ]


def flag_panels() -> list[dict]:
    flagged = f"guard_images_flagged_total{{{JOB},{MODEL}}}"
    images = f"guard_images_total{{{JOB},{MODEL}}}"
    ratio_thresholds = {
        "mode": "absolute",
        "steps": [
            {"color": "green", "value": None},
            {"color": "red", "value": FLAG_RATIO_THRESHOLD},
        ],
    }
    return [
        row("Flags"),
        panel(
            "timeseries",
            "Flag rate by model set",
            "Images flagged as carrying a trigger, per second, per model set. "
            "A step up against the set's usual level is what GuardFlagRateSpike pages on.",
            [target(f"sum by (model) (rate({flagged}[{RATE}]))", "{{model}}", "A")],
            "short",
        ),
        panel(
            "timeseries",
            "Flag rate by predicted class",
            "Flagged images per second by the class the target model gave the image as uploaded. "
            "A backdoor campaign concentrates on the attacker's target class.",
            [
                target(
                    f"sum by (model, predicted_class) (rate({flagged}[{RATE}]))",
                    "{{model}} class {{predicted_class}}",
                    "A",
                )
            ],
            "short",
        ),
        panel(
            "timeseries",
            "Flag ratio by model set",
            "Share of classified images that were flagged. The red line is the "
            "GuardFlagRatioHigh threshold.",
            [
                target(
                    f"sum by (model) (rate({flagged}[{RATE}])) "
                    f"/ sum by (model) (rate({images}[{RATE}]))",
                    "{{model}}",
                    "A",
                )
            ],
            "percentunit",
            fieldConfig={
                "defaults": {
                    "unit": "percentunit",
                    "min": 0,
                    "thresholds": ratio_thresholds,
                    "custom": {"thresholdsStyle": {"mode": "line"}},
                },
                "overrides": [],
            },
        ),
        panel(
            "timeseries",
            "Unscorable images by model set",
            "Images refused (422 unscorable_image) because the set's own graphs gave NaN or "
            "infinite logits on them, so no verdict could be computed. Any rate here means a "
            "broken or numerically fragile model, or inputs crafted to break it.",
            [
                target(
                    f"sum by (model) (rate(guard_images_unscorable_total{{{JOB},{MODEL}}}"
                    f"[{RATE}]))",
                    "{{model}}",
                    "A",
                )
            ],
            "short",
        ),
        panel(
            "stat",
            "Flag ratio, all model sets",
            "Flagged / classified images over the dashboard's time range, all selected sets.",
            [
                target(
                    f"sum(increase({flagged}[$__range])) / sum(increase({images}[$__range]))",
                    "",
                    "A",
                    instant=True,
                )
            ],
            "percentunit",
            fieldConfig={
                "defaults": {"unit": "percentunit", "thresholds": ratio_thresholds},
                "overrides": [],
            },
        ),
    ]


def traffic_panels() -> list[dict]:
    requests = f"guard_http_requests_total{{{JOB}}}"
    return [
        row("Traffic and errors"),
        panel(
            "timeseries",
            "Request rate by route",
            "HTTP requests answered per second, by route template and method.",
            [
                target(
                    f"sum by (route, method) (rate({requests}[{RATE}]))",
                    "{{method}} {{route}}",
                    "A",
                )
            ],
            "reqps",
        ),
        panel(
            "timeseries",
            "Errors by status class",
            "4xx (bad input, auth, payload limits) and 5xx (bugs, models that cannot run, "
            "a full queue) per second. GuardErrorRateHigh pages on the 5xx share.",
            [
                target(
                    f"sum by (status_class) (rate(guard_http_requests_total"
                    f'{{{JOB},status_class=~"4xx|5xx"}}[{RATE}]))',
                    "{{status_class}}",
                    "A",
                )
            ],
            "reqps",
        ),
        panel(
            "timeseries",
            "Images classified by model set",
            "Images per second through each model set (a request may carry several).",
            [
                target(
                    f"sum by (model) (rate(guard_images_total{{{JOB},{MODEL}}}[{RATE}]))",
                    "{{model}}",
                    "A",
                )
            ],
            "short",
        ),
        panel(
            "timeseries",
            "Requests in flight",
            "HTTP requests being handled right now, per instance.",
            [target(f"sum by (instance) (guard_requests_in_flight{{{JOB}}})", "{{instance}}", "A")],
            "short",
        ),
    ]


def latency_panels() -> list[dict]:
    titles = {
        "total": "Latency per request (stage total)",
        "decode": "Decode latency (stage decode)",
        "queue": "Queue wait (stage queue)",
        "inference": "Inference latency (stage inference)",
    }
    panels = [row("Latency by stage: p50 / p95 / p99")]
    for stage, title in titles.items():
        panels.append(
            panel(
                "timeseries",
                title,
                f"p50, p95 and p99 of the '{stage}' stage. GuardLatencyP99High watches p99 of "
                "'total'; a growing queue wait means the engine cannot keep up.",
                quantile_targets("guard_stage_duration_seconds", "stage", f'{JOB},stage="{stage}"'),
                "s",
            )
        )
    return panels


def batching_panels() -> list[dict]:
    sel = f"{JOB},{MODEL}"
    return [
        row("Batching"),
        panel(
            "timeseries",
            "Batch size p50 / p95 / p99",
            "Images per engine batch, per model set. Batches of 1 under load mean "
            "GUARD_MAX_BATCH_WAIT_MS is too short to gather requests.",
            quantile_targets("guard_batch_size", "model", sel),
            "short",
        ),
        panel(
            "timeseries",
            "Mean batch size",
            "Average images per engine batch, per model set.",
            [
                target(
                    f"sum by (model) (rate(guard_batch_size_sum{{{sel}}}[{RATE}])) "
                    f"/ sum by (model) (rate(guard_batch_size_count{{{sel}}}[{RATE}]))",
                    "{{model}}",
                    "A",
                )
            ],
            "short",
        ),
        panel(
            "timeseries",
            "Queue depth",
            "Images waiting in the engine queue, per model set; requests past "
            "GUARD_MAX_QUEUE_IMAGES are answered 503.",
            [target(f"sum by (model) (guard_queue_depth{{{sel}}})", "{{model}}", "A")],
            "short",
        ),
    ]


def model_panels() -> list[dict]:
    up_mapping = [
        {
            "type": "value",
            "options": {
                "0": {"text": "down", "color": "red"},
                "1": {"text": "up", "color": "green"},
            },
        }
    ]
    return [
        row("Model sets and readiness"),
        panel(
            "table",
            "Provider in use",
            "What each instance has loaded: the execution provider the session runs on "
            "(read back from ONNX Runtime), the decision rule and the graphs' sha256 prefixes.",
            [target(f"guard_model_info{{{JOB},{MODEL}}}", "", "A", instant=True, table=True)],
            "none",
            transformations=[
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {
                            "Time": True,
                            "Value": True,
                            "__name__": True,
                            "job": True,
                        },
                        "indexByName": {
                            "instance": 0,
                            "model": 1,
                            "provider": 2,
                            "decision_rule": 3,
                            "target_sha256": 4,
                            "detrigger_sha256": 5,
                        },
                    },
                }
            ],
        ),
        panel(
            "stat",
            "Readiness by model set",
            "1 when the model set is loaded and warm on that instance (GET /readyz).",
            [
                target(
                    f"guard_model_ready{{{JOB},{MODEL}}}",
                    "{{instance}} {{model}}",
                    "A",
                    instant=True,
                )
            ],
            "none",
            fieldConfig={"defaults": {"unit": "none", "mappings": READY_MAPPING}, "overrides": []},
            options={"colorMode": "background", "graphMode": "none", "textMode": "value_and_name"},
        ),
        panel(
            "stat",
            "Scrape targets up",
            "Whether Prometheus reaches each guard instance's /metrics.",
            [target(f"up{{{JOB}}}", "{{instance}}", "A", instant=True)],
            "none",
            fieldConfig={"defaults": {"unit": "none", "mappings": up_mapping}, "overrides": []},
            options={"colorMode": "background", "graphMode": "none", "textMode": "value_and_name"},
        ),
    ]


def upstream_panels() -> list[dict]:
    """Proxy mode (GUARD_UPSTREAMS): the upstream V2 server that runs a set's target model.
    Local-mode sets export no upstream series, so these panels stay empty for them."""
    sel = f"{JOB},{MODEL}"
    breaker_mapping = [
        {
            "type": "value",
            "options": {
                "0": {"text": "closed", "color": "green"},
                "1": {"text": "half-open", "color": "orange"},
                "2": {"text": "open", "color": "red"},
            },
        }
    ]
    stat_options = {"colorMode": "background", "graphMode": "none", "textMode": "value_and_name"}
    return [
        row("Upstream (proxy mode)"),
        panel(
            "timeseries",
            "Upstream latency p50 / p95 / p99",
            "Inference calls to the upstream V2 server that answered (outcome ok), per model "
            "set; each call carries the batch [x; AE(x)] of 2N images. Failed calls are in "
            "'Upstream errors by kind'.",
            quantile_targets(
                "guard_upstream_request_duration_seconds", "model", f'{sel},outcome="ok"'
            ),
            "s",
        ),
        panel(
            "timeseries",
            "Upstream errors by kind",
            "Failed upstream calls per second: connect, timeout, http_5xx, http_4xx, "
            "invalid_response; breaker_open calls were refused by the open circuit breaker "
            "and never sent.",
            [
                target(
                    f"sum by (model, kind) (rate(guard_upstream_errors_total{{{sel}}}[{RATE}]))",
                    "{{model}} {{kind}}",
                    "A",
                )
            ],
            "reqps",
        ),
        panel(
            "stat",
            "Upstream circuit breaker",
            "The breaker of each set's upstream: closed (calls go out), half-open (one probe "
            "call is out), open (calls fail fast with 503). GuardUpstreamDown pages on it.",
            [
                target(
                    f"guard_upstream_breaker_state{{{sel}}}",
                    "{{instance}} {{model}}",
                    "A",
                    instant=True,
                )
            ],
            "none",
            fieldConfig={
                "defaults": {"unit": "none", "mappings": breaker_mapping},
                "overrides": [],
            },
            options=stat_options,
        ),
        panel(
            "stat",
            "Upstream readiness",
            "1 when the upstream answers its model-ready endpoint (polled every "
            "GUARD_UPSTREAM_PROBE_INTERVAL_S); /readyz is 503 while it does not.",
            [
                target(
                    f"guard_upstream_ready{{{sel}}}",
                    "{{instance}} {{model}}",
                    "A",
                    instant=True,
                )
            ],
            "none",
            fieldConfig={"defaults": {"unit": "none", "mappings": READY_MAPPING}, "overrides": []},
            options=stat_options,
        ),
    ]


def layout(panels: list[dict]) -> list[dict]:
    """Give each panel an id and a grid position: rows full width, then panels side by side."""
    x, y = 0, 0
    for pid, p in enumerate(panels, start=1):
        p["id"] = pid
        if p["type"] == "row":
            if x:
                x, y = 0, y + 8
            p["gridPos"] = {"h": 1, "w": WIDTH, "x": 0, "y": y}
            y += 1
            continue
        w = 6 if p["type"] == "stat" else 12
        if x + w > WIDTH:
            x, y = 0, y + 8
        p["gridPos"] = {"h": 8, "w": w, "x": x, "y": y}
        x += w
    return panels


def dashboard() -> dict:
    panels = (
        flag_panels()
        + traffic_panels()
        + latency_panels()
        + batching_panels()
        + model_panels()
        + upstream_panels()
    )
    return {
        "uid": UID,
        "title": "detrigger-guard",
        "description": "Flags, traffic, latency, batching, readiness and upstream (proxy mode) "
        "of the backdoor guard.",
        "tags": ["detrigger-guard"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "timezone": "utc",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                {
                    "name": "model",
                    "label": "Model set",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": {
                        "query": f"label_values(guard_model_info{{{JOB}}}, model)",
                        "refId": "A",
                    },
                    "definition": f"label_values(guard_model_info{{{JOB}}}, model)",
                    "multi": True,
                    "includeAll": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                    "refresh": 2,
                    "sort": 1,
                    "hide": 0,
                },
            ]
        },
        "annotations": {"list": []},
        "panels": layout(panels),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, sort_keys=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 if the JSON file is stale"
    )
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python {Path(__file__)}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
