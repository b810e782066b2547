"""The Grafana dashboard for detrigger-guard, as code, built with grafana-foundation-sdk.

    python deploy/grafana/dashboard.py          # writes dashboards/detrigger-guard.json beside it
    python deploy/grafana/dashboard.py --check  # exits 1 if that file is not what this code makes

The SDK's typed builders (Grafana's own dashboard schema, generated from its CUE kinds) make
the JSON; tests/deploy/test_dashboard.py reads the file back through the SDK's models. Only
the metrics in docs/metrics.md (and Prometheus' own `up`) are queried. The `$__rate_interval`,
`$__range` and `$model` variables are Grafana's; tests substitute them before parsing each
expression with promtool.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUT = Path(__file__).parent / "dashboards" / "detrigger-guard.json"
UID = "detrigger-guard"
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
# Selectors every query carries, so the dashboard follows the template variables.
JOB = 'job="detrigger-guard"'
MODEL = 'model=~"$model"'
RATE = "$__rate_interval"
QUANTILES = (0.5, 0.95, 0.99)
# Kept equal to the GuardFlagRatioHigh threshold in deploy/prometheus/rules/guard-alerts.yml.
FLAG_RATIO_THRESHOLD = 0.05
# GuardFlagRateSpike: the rate over 5m against 3x the rate over the day before (offset 5m).
SPIKE_FACTOR = 3
HEIGHT = 8
PanelBuilder = timeseries.Panel | stat.Panel | table.Panel | heatmap.Panel


def _value_map(options: dict[str, tuple[str, str]]) -> list[dm.ValueMapping]:
    return [
        dm.ValueMap(
            options={k: dm.ValueMappingResult(text=t, color=c) for k, (t, c) in options.items()}
        )
    ]


READY_MAPPING = _value_map({"0": ("not ready", "red"), "1": ("ready", "green")})
UP_MAPPING = _value_map({"0": ("down", "red"), "1": ("up", "green")})
BREAKER_MAPPING = _value_map(
    {"0": ("closed", "green"), "1": ("half-open", "orange"), "2": ("open", "red")}
)


def query(
    expr: str, legend: str, ref: str, *, instant: bool = False, fmt: PromQueryFormat | None = None
) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)
    if instant:
        q = q.instant()
    if fmt is not None:
        q = q.format(fmt)
    return q


def quantile_queries(metric: str, by: str, selector: str) -> list[prometheus.Dataquery]:
    """p50 / p95 / p99 of a histogram, one series per value of the `by` labels."""
    return [
        query(
            f"histogram_quantile({q}, sum by (le, {by}) "
            f"(rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"p{round(q * 100)} " + " ".join(f"{{{{{label.strip()}}}}}" for label in by.split(",")),
            chr(ord("A") + i),
        )
        for i, q in enumerate(QUANTILES)
    ]


def graph(
    title: str, description: str, queries: list[prometheus.Dataquery], unit: str, width: int = 12
) -> timeseries.Panel:
    legend = (
        cb.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.LIST)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
    )
    return (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(queries)
        .unit(unit)
        .legend(legend)
        .height(HEIGHT)
        .span(width)
    )


def big_value(
    title: str,
    description: str,
    queries: list[prometheus.Dataquery],
    mappings: list[dm.ValueMapping] | None = None,
) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(queries)
        .unit("none")
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
        .height(HEIGHT)
        .span(6)
    )
    return panel.mappings(mappings) if mappings else panel


def ratio_thresholds() -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(None, "green"), dm.Threshold(FLAG_RATIO_THRESHOLD, "red")])
    )


def dashed_red(ref: str) -> tuple[str, list[dm.DynamicConfigValue]]:
    """An override that draws query ``ref`` as a red dashed line: a limit, not a measurement."""
    return ref, [
        dm.DynamicConfigValue("custom.lineStyle", {"fill": "dash", "dash": [10, 10]}),
        dm.DynamicConfigValue("color", {"mode": "fixed", "fixedColor": "red"}),
    ]


# --- rows -------------------------------------------------------------------------------------
def flag_panels() -> list[PanelBuilder]:
    flagged = f"guard_images_flagged_total{{{JOB},{MODEL}}}"
    images = f"guard_images_total{{{JOB},{MODEL}}}"
    by_detector = "sum by (model, detector)"
    return [
        graph(
            "Flag rate by model set",
            "Images flagged as carrying a trigger, per second, per model set. "
            "A step up against the set's usual level is what GuardFlagRateSpike pages on.",
            [query(f"sum by (model) (rate({flagged}[{RATE}]))", "{{model}}", "A")],
            "short",
        ),
        graph(
            "Flag rate against the alert's baseline",
            "What GuardFlagRateSpike compares, with its windows: the flag rate over 5 minutes, "
            "the set's rate over the day before (offset 5m: the baseline) and 3x the baseline "
            "(dashed), the line the rate must cross, with more than 10 flags in 5 minutes and "
            "a day of history, for 5 minutes, to page.",
            [
                query(f"sum by (model) (rate({flagged}[5m]))", "rate {{model}}", "A"),
                query(f"sum by (model) (rate({flagged}[1d] offset 5m))", "baseline {{model}}", "B"),
                query(
                    f"{SPIKE_FACTOR} * sum by (model) (rate({flagged}[1d] offset 5m))",
                    f"{SPIKE_FACTOR}x baseline {{{{model}}}}",
                    "C",
                ),
            ],
            "short",
        ).override_by_query(*dashed_red("C")),
        graph(
            "Flag rate by detector",
            "Flagged images per second by model set and detector: the de-trigger AE "
            "(detrigger) and STRIP (strip) flag apart, so a campaign one of them misses shows "
            "as a gap between the two.",
            [query(f"{by_detector} (rate({flagged}[{RATE}]))", "{{model}} {{detector}}", "A")],
            "short",
        ),
        graph(
            "Flag ratio by detector",
            "Share of each detector's images that it flagged, per model set. The red line is "
            "the GuardFlagRatioHigh threshold (which sums the detectors).",
            [
                query(
                    f"{by_detector} (rate({flagged}[{RATE}])) "
                    f"/ {by_detector} (rate({images}[{RATE}]))",
                    "{{model}} {{detector}}",
                    "A",
                )
            ],
            "percentunit",
        )
        .min(0)
        .thresholds(ratio_thresholds())
        .thresholds_style(
            cb.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE)
        ),
        graph(
            "Flag rate by predicted class",
            "Flagged images per second by the class the target model gave the image as uploaded. "
            "A backdoor campaign concentrates on the attacker's target class.",
            [
                query(
                    f"sum by (model, predicted_class) (rate({flagged}[{RATE}]))",
                    "{{model}} class {{predicted_class}}",
                    "A",
                )
            ],
            "short",
        ),
        graph(
            "Flag ratio by model set",
            "Share of classified images that were flagged. The red line is the "
            "GuardFlagRatioHigh threshold.",
            [
                query(
                    f"sum by (model) (rate({flagged}[{RATE}])) "
                    f"/ sum by (model) (rate({images}[{RATE}]))",
                    "{{model}}",
                    "A",
                )
            ],
            "percentunit",
        )
        .min(0)
        .thresholds(ratio_thresholds())
        .thresholds_style(
            cb.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE)
        ),
        graph(
            "Unscorable images by model set",
            "Images refused (422 unscorable_image) because the set's own graphs gave NaN or "
            "infinite logits on them, so no verdict could be computed. Any rate here means a "
            "broken or numerically fragile model, or inputs crafted to break it.",
            [
                query(
                    f"sum by (model) (rate(guard_images_unscorable_total{{{JOB},{MODEL}}}"
                    f"[{RATE}]))",
                    "{{model}}",
                    "A",
                )
            ],
            "short",
        ),
        stat.Panel()
        .title("Flag ratio, all model sets")
        .description(
            "Flagged / classified images over the dashboard's time range, all selected sets."
        )
        .datasource(DATASOURCE)
        .targets(
            [
                query(
                    f"sum(increase({flagged}[$__range])) / sum(increase({images}[$__range]))",
                    "",
                    "A",
                    instant=True,
                )
            ]
        )
        .unit("percentunit")
        .thresholds(ratio_thresholds())
        .color_mode(common.BigValueColorMode.VALUE)
        .graph_mode(common.BigValueGraphMode.NONE)
        .height(HEIGHT)
        .span(6),
    ]


def class_panels() -> list[PanelBuilder]:
    """The runbook's first step: the class mix of all traffic beside the flagged share."""
    flagged = f"guard_images_flagged_total{{{JOB},{MODEL}}}"
    images = f"guard_images_total{{{JOB},{MODEL}}}"
    by_class = "sum by (model, predicted_class)"
    return [
        graph(
            "Images by predicted class",
            "Images per second by the class the target model predicts on the image as "
            "uploaded (all detectors): the clean class mix to compare the flags with.",
            [
                query(
                    f"{by_class} (rate({images}[{RATE}]))",
                    "{{model}} class {{predicted_class}}",
                    "A",
                )
            ],
            "short",
        ),
        graph(
            "Flagged share by predicted class",
            "Per class, the share of its images that were flagged. A class whose share rises "
            "while its traffic does not is the likely target class of a trigger.",
            [
                query(
                    f"{by_class} (rate({flagged}[{RATE}])) / {by_class} (rate({images}[{RATE}]))",
                    "{{model}} class {{predicted_class}}",
                    "A",
                )
            ],
            "percentunit",
        ).min(0),
    ]


def score_panels() -> list[PanelBuilder]:
    sel = f"{JOB},{MODEL}"
    return [
        graph(
            "Score p50 / p95 / p99 against the threshold",
            "The detector's score per model set and detector (prob_drop, kl or STRIP entropy, "
            "as the manifest says), and the threshold it is compared with (dashed; rule score "
            "flags above it, score_below, STRIP, below it). Quantiles drifting toward the "
            "threshold mean the clean data moves, or near-miss triggers.",
            [
                *quantile_queries("guard_score", "model, detector", sel),
                query(
                    f"max by (model, detector) (guard_threshold{{{sel}}})",
                    "threshold {{model}} {{detector}}",
                    "T",
                ),
            ],
            "short",
        ).override_by_query(*dashed_red("T")),
        heatmap.Panel()
        .title("Score distribution by model set")
        .description(
            "How many images scored in each guard_score bucket, over time, one panel per "
            "selected model set (all detectors). The threshold is on the panel to the left."
        )
        .datasource(DATASOURCE)
        .targets(
            [
                query(
                    f"sum by (le) (increase(guard_score_bucket{{{sel}}}[{RATE}]))",
                    "{{le}}",
                    "A",
                    fmt=PromQueryFormat.HEATMAP,
                )
            ]
        )
        .calculate(False)
        .color(
            heatmap.HeatmapColorOptions()
            .mode(hm.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .scale(hm.HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)
        )
        .y_axis(heatmap.YAxisConfig().unit("short"))
        .repeat("model")
        .repeat_direction("h")
        .height(HEIGHT)
        .span(12),
    ]


def traffic_panels() -> list[PanelBuilder]:
    requests = f"guard_http_requests_total{{{JOB}}}"
    return [
        graph(
            "Request rate by route",
            "HTTP requests answered per second, by route template and method.",
            [
                query(
                    f"sum by (route, method) (rate({requests}[{RATE}]))",
                    "{{method}} {{route}}",
                    "A",
                )
            ],
            "reqps",
        ),
        graph(
            "Errors by status class",
            "4xx (bad input, auth, payload limits) and 5xx (bugs, models that cannot run, "
            "a full queue) per second. GuardErrorRateHigh pages on the 5xx share, health "
            "probes left out.",
            [
                query(
                    f"sum by (status_class) (rate(guard_http_requests_total"
                    f'{{{JOB},status_class=~"4xx|5xx"}}[{RATE}]))',
                    "{{status_class}}",
                    "A",
                )
            ],
            "reqps",
        ),
        graph(
            "Images classified by model set",
            "Images per second through each model set (a request may carry several).",
            [
                query(
                    f"sum by (model) (rate(guard_images_total{{{JOB},{MODEL}}}[{RATE}]))",
                    "{{model}}",
                    "A",
                )
            ],
            "short",
        ),
        graph(
            "Requests in flight",
            "HTTP requests being handled right now, per instance.",
            [query(f"sum by (instance) (guard_requests_in_flight{{{JOB}}})", "{{instance}}", "A")],
            "short",
        ),
    ]


def latency_panels() -> list[PanelBuilder]:
    titles = {
        "total": "Latency per request (stage total)",
        "decode": "Decode latency (stage decode)",
        "queue": "Queue wait (stage queue)",
        "inference": "Inference latency (stage inference)",
    }
    return [
        graph(
            title,
            f"p50, p95 and p99 of the '{stage}' stage per model set. GuardLatencyP99High "
            "watches p99 of 'total' over all sets; a growing queue wait means the engine "
            "cannot keep up. A 'total' series with no model counts requests refused before a "
            "set was resolved.",
            quantile_queries(
                "guard_stage_duration_seconds", "model", f'{JOB},{MODEL},stage="{stage}"'
            ),
            "s",
        )
        for stage, title in titles.items()
    ]


def batching_panels() -> list[PanelBuilder]:
    sel = f"{JOB},{MODEL}"
    return [
        graph(
            "Batch size p50 / p95 / p99",
            "Images per engine batch, per model set. An idle engine runs a request at once; "
            "requests that arrive while a batch runs share the next one. Batches of 1 under "
            "load mean each batch ends before the next request: GUARD_MAX_BATCH_WAIT_MS > 0 "
            "trades latency for larger batches.",
            quantile_queries("guard_batch_size", "model", sel),
            "short",
        ),
        graph(
            "Mean batch size",
            "Average images per engine batch, per model set.",
            [
                query(
                    f"sum by (model) (rate(guard_batch_size_sum{{{sel}}}[{RATE}])) "
                    f"/ sum by (model) (rate(guard_batch_size_count{{{sel}}}[{RATE}]))",
                    "{{model}}",
                    "A",
                )
            ],
            "short",
        ),
        graph(
            "Queue depth",
            "Images waiting in the engine queue, per model set; requests past "
            "GUARD_MAX_QUEUE_IMAGES are answered 503.",
            [query(f"sum by (model) (guard_queue_depth{{{sel}}})", "{{model}}", "A")],
            "short",
        ),
        graph(
            "Second target passes skipped",
            "Share of the images judged by the de-trigger detector that its AE returned bit "
            "for bit unchanged (a gated AE): the target ran on them once instead of twice. 0 "
            "for an ungated AE. A drop means the traffic moved away from the images the gate "
            "was set on: more triggered images, or another kind of image.",
            [
                query(
                    f"sum by (model) (rate(guard_unchanged_images_total{{{sel}}}[{RATE}])) "
                    f'/ sum by (model) (rate(guard_images_total{{{sel},detector="detrigger"}}'
                    f"[{RATE}]))",
                    "{{model}}",
                    "A",
                )
            ],
            "percentunit",
        ),
    ]


def model_panels() -> list[PanelBuilder]:
    organize = dm.DataTransformerConfig(
        id_val="organize",
        options={
            "excludeByName": {"Time": True, "Value": True, "__name__": True, "job": True},
            "indexByName": {
                "instance": 0,
                "model": 1,
                "provider": 2,
                "decision_rule": 3,
                "target_sha256": 4,
                "detrigger_sha256": 5,
            },
        },
    )
    return [
        table.Panel()
        .title("Provider in use")
        .description(
            "What each instance has loaded: the execution provider the session runs on "
            "(read back from ONNX Runtime), the decision rule and the graphs' sha256 prefixes."
        )
        .datasource(DATASOURCE)
        .targets(
            [
                query(
                    f"guard_model_info{{{JOB},{MODEL}}}",
                    "",
                    "A",
                    instant=True,
                    fmt=PromQueryFormat.TABLE,
                )
            ]
        )
        .unit("none")
        .with_transformation(organize)
        .show_header(True)
        .height(HEIGHT)
        .span(12),
        big_value(
            "Readiness by model set",
            "1 when the model set is loaded and warm on that instance (GET /readyz).",
            [
                query(
                    f"guard_model_ready{{{JOB},{MODEL}}}",
                    "{{instance}} {{model}}",
                    "A",
                    instant=True,
                )
            ],
            READY_MAPPING,
        ),
        big_value(
            "Scrape targets up",
            "Whether Prometheus reaches each guard instance's /metrics.",
            [query(f"up{{{JOB}}}", "{{instance}}", "A", instant=True)],
            UP_MAPPING,
        ),
    ]


def process_panels() -> list[PanelBuilder]:
    """prometheus_client's process collector, on the app's registry."""
    return [
        graph(
            "Process memory",
            "Resident memory of each guard process. Growth without more model sets points "
            "to a leak; near the container limit it means an OOM kill to come.",
            [query(f"process_resident_memory_bytes{{{JOB}}}", "{{instance}}", "A")],
            "bytes",
        ),
        graph(
            "Process CPU",
            "CPU seconds per second of each guard process (1 = one core busy).",
            [query(f"rate(process_cpu_seconds_total{{{JOB}}}[{RATE}])", "{{instance}}", "A")],
            "short",
        ),
    ]


def upstream_panels() -> list[PanelBuilder]:
    """Proxy mode (GUARD_UPSTREAMS): the upstream V2 server that runs a set's target model.
    Local-mode sets export no upstream series, so these panels stay empty for them."""
    sel = f"{JOB},{MODEL}"
    return [
        graph(
            "Upstream latency p50 / p95 / p99",
            "Inference calls to the upstream V2 server that answered (outcome ok), per model "
            "set; each call carries the batch [x; AE(x)] of 2N images. Failed calls are in "
            "'Upstream errors by kind'.",
            quantile_queries(
                "guard_upstream_request_duration_seconds", "model", f'{sel},outcome="ok"'
            ),
            "s",
        ),
        graph(
            "Upstream errors by kind",
            "Failed upstream calls per second: connect, timeout, http_5xx, http_4xx, "
            "invalid_response; breaker_open calls were refused by the open circuit breaker "
            "and never sent.",
            [
                query(
                    f"sum by (model, kind) (rate(guard_upstream_errors_total{{{sel}}}[{RATE}]))",
                    "{{model}} {{kind}}",
                    "A",
                )
            ],
            "reqps",
        ),
        big_value(
            "Upstream circuit breaker",
            "The breaker of each set's upstream: closed (calls go out), half-open (one probe "
            "call is out), open (calls fail fast with 503). GuardUpstreamDown pages on it.",
            [
                query(
                    f"guard_upstream_breaker_state{{{sel}}}",
                    "{{instance}} {{model}}",
                    "A",
                    instant=True,
                )
            ],
            BREAKER_MAPPING,
        ),
        big_value(
            "Upstream readiness",
            "1 when the upstream answers its model-ready endpoint (polled every "
            "GUARD_UPSTREAM_PROBE_INTERVAL_S); /readyz is 503 while it does not.",
            [
                query(
                    f"guard_upstream_ready{{{sel}}}",
                    "{{instance}} {{model}}",
                    "A",
                    instant=True,
                )
            ],
            READY_MAPPING,
        ),
    ]


def quarantine_panels() -> list[PanelBuilder]:
    """The quarantine of flagged inputs (GUARD_QUARANTINE_DIR); flat at 0 while it is off."""
    return [
        graph(
            "Quarantine writes and drops",
            "Flagged images written to the quarantine per second, per model set, and those "
            "dropped, by reason: queue_full (the writer fell behind), write_error (full disk, "
            "read-only folder). Requests are answered either way; drops lose forensics.",
            [
                query(
                    f"sum by (model) (rate(guard_quarantine_written_total{{{JOB},{MODEL}}}"
                    f"[{RATE}]))",
                    "written {{model}}",
                    "A",
                ),
                query(
                    f"sum by (reason) (rate(guard_quarantine_dropped_total{{{JOB}}}[{RATE}]))",
                    "dropped {{reason}}",
                    "B",
                ),
            ],
            "short",
        ),
        graph(
            "Quarantine size",
            "Items and bytes kept per instance; eviction holds them under "
            "GUARD_QUARANTINE_MAX_BYTES and GUARD_QUARANTINE_MAX_AGE_S.",
            [
                query(f"guard_quarantine_items{{{JOB}}}", "items {{instance}}", "A"),
                query(f"guard_quarantine_bytes{{{JOB}}}", "bytes {{instance}}", "B"),
            ],
            "short",
        ),
    ]


ROWS = {
    "Flags": flag_panels,
    "Flags by predicted class (runbook: compare with the clean class mix)": class_panels,
    "Detector scores": score_panels,
    "Traffic and errors": traffic_panels,
    "Latency by stage and model set: p50 / p95 / p99": latency_panels,
    "Batching": batching_panels,
    "Model sets and readiness": model_panels,
    "Process": process_panels,
    "Quarantine of flagged inputs": quarantine_panels,
    "Upstream (proxy mode)": upstream_panels,
}


def variables() -> list[db.DatasourceVariable | db.QueryVariable]:
    models = f"label_values(guard_model_info{{{JOB}}}, model)"
    return [
        db.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        db.QueryVariable("model")
        .label("Model set")
        .datasource(DATASOURCE)
        .query(models)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dm.VariableOption(text="All", value="$__all"))
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC),
    ]


def build() -> dm.Dashboard:
    builder = (
        db.Dashboard("detrigger-guard")
        .uid(UID)
        .description(
            "Flags (per detector, per class, against the alert's baseline), detector scores, "
            "traffic, latency per stage and model set, batching, readiness, the process and "
            "the upstream (proxy mode) of the backdoor guard."
        )
        .tags(["detrigger-guard"])
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .time("now-6h", "now")
        .refresh("30s")
        .timezone("utc")
        .version(1)
        .variables(variables())
    )
    pid = 0
    for title, make in ROWS.items():
        pid += 1
        builder = builder.with_row(db.Row(title).id(pid))
        for panel in make():
            pid += 1
            builder = builder.with_panel(panel.id(pid))
    built = builder.build()
    for variable in built.templating.list_val or []:
        if variable.type_val != dm.VariableType.INTERVAL:
            # The SDK writes an interval variable's auto, auto_min and auto_count on every
            # variable; Grafana's schema (deploy/grafana/schema/) has them on none, and Grafana
            # reads them on interval variables only.
            variable.auto = variable.auto_min = variable.auto_count = None
    return built


def render() -> str:
    return json.dumps(build(), cls=JSONEncoder, indent=2, sort_keys=False) + "\n"


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
