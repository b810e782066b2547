"""Prometheus metrics (docs/metrics.md), on a registry owned by one app instance."""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

# No *_created series: they double the series count and Prometheus does not need them.
disable_created_metrics()

STAGES = ("decode", "queue", "inference", "total")
# Seconds: 0.5 ms .. 10 s, dense where a small-CNN guard on CPU spends its time.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
UPSTREAM_OUTCOMES = ("ok", "error")
UPSTREAM_ERROR_KINDS = (
    "connect", "timeout", "http_5xx", "http_4xx", "invalid_response", "breaker_open",
)  # fmt: skip
QUARANTINE_DROP_REASONS = ("queue_full", "write_error")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Detector scores: prob_drop lies in [-1, 1], STRIP's entropy in [0, log2 K] bits (3.3 for 10
# classes), KL in nats from 0 up. Fine steps in [0, 1] where the calibrated thresholds sit,
# coarse ones above; 24 buckets, the same for every detector so that sets compare.
SCORE_BUCKETS = (
    -0.5, -0.1, 0.0, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
    0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0, 10.0,
)  # fmt: skip
# The model set a request resolved to, for the per-request stage (`total`): set by the
# repository when it resolves a name, read by the routes when they observe the total. Empty
# when the request was refused before (unknown name, not ready), so that a client's made-up
# model names never become label values.
request_model: ContextVar[str] = ContextVar("request_model", default="")


class Metrics:
    """Every collector the guard exports. Create one per app, on a fresh registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "guard_http_requests",
            "HTTP requests answered, by route template.",
            ["route", "method", "status_class"],
            registry=r,
        )
        self.images = Counter(
            "guard_images",
            "Images classified, by the class predicted on the image as uploaded and the "
            "detector that judged it.",
            ["model", "predicted_class", "detector"],
            registry=r,
        )
        self.images_flagged = Counter(
            "guard_images_flagged",
            "Images flagged as carrying a trigger, by the class predicted on the uploaded image "
            "and the detector that flagged it.",
            ["model", "predicted_class", "detector"],
            registry=r,
        )
        self.unscorable = Counter(
            "guard_images_unscorable",
            "Images refused because the model set's graphs gave non-finite logits on them, so "
            "no verdict could be computed (their requests get 422 unscorable_image).",
            ["model"],
            registry=r,
        )
        self.unchanged_images = Counter(
            "guard_unchanged_images",
            "Images judged by the de-trigger detector that its AE returned bit for bit "
            "unchanged (a gated AE, docs/model-contract.md): the target ran on them once, not "
            'twice. Over guard_images_total{detector="detrigger"}: the share the gate saves.',
            ["model"],
            registry=r,
        )
        self.stage_duration = Histogram(
            "guard_stage_duration_seconds",
            "Latency by stage and model set: decode (per request), queue (per engine item), "
            "inference (per engine batch), total (per request; model empty when the request was "
            "refused before a model set was resolved).",
            ["stage", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "guard_batch_size",
            "Images per engine batch, by the detector the batch ran (a STRIP batch of B images "
            "runs the target on B * (n + 1)).",
            ["model", "detector"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.score = Histogram(
            "guard_score",
            "The detector's score of each judged image (prob_drop, kl or STRIP entropy, as "
            "guard_threshold's score label says), by model set and detector.",
            ["model", "detector"],
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.threshold = Gauge(
            "guard_threshold",
            "The threshold a detector compares its score with (only where the rule compares "
            "the score: rule score flags above it, score_below below it).",
            ["model", "detector", "score", "rule"],
            registry=r,
        )
        self.in_flight = Gauge(
            "guard_requests_in_flight", "HTTP requests being handled.", registry=r
        )
        self.queue_depth = Gauge(
            "guard_queue_depth", "Images waiting in the engine queue.", ["model"], registry=r
        )
        self.model_info = Gauge(
            "guard_model_info",
            "What is loaded and where it runs (value 1).",
            ["model", "provider", "target_sha256", "detrigger_sha256", "decision_rule"],
            registry=r,
        )
        self.model_ready = Gauge(
            "guard_model_ready", "1 when the model set is loaded and warm, else 0.", ["model"],
            registry=r,
        )  # fmt: skip
        # --- proxy mode: the upstream V2 server of a model set ---------------------------------
        self.upstream_duration = Histogram(
            "guard_upstream_request_duration_seconds",
            "Latency of inference calls to the upstream V2 server, by outcome (ok, error).",
            ["model", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "guard_upstream_errors",
            "Failed upstream calls by kind: connect, timeout, http_5xx, http_4xx, "
            "invalid_response, breaker_open (refused by the open breaker, never sent).",
            ["model", "kind"],
            registry=r,
        )
        self.upstream_breaker_state = Gauge(
            "guard_upstream_breaker_state",
            "Circuit breaker of the upstream: 0 closed, 1 half-open (probing), 2 open.",
            ["model"],
            registry=r,
        )
        self.upstream_ready = Gauge(
            "guard_upstream_ready",
            "1 when the upstream answers its model-ready endpoint, else 0.",
            ["model"],
            registry=r,
        )
        # --- the quarantine of flagged inputs (opt-in) ---------------------------------------
        self.quarantine_written = Counter(
            "guard_quarantine_written",
            "Flagged images written to the quarantine, by model set.",
            ["model"],
            registry=r,
        )
        self.quarantine_dropped = Counter(
            "guard_quarantine_dropped",
            "Flagged images the quarantine did not keep: queue_full (the writer fell behind), "
            "write_error (full disk, read-only folder, ...). The request is answered either way.",
            ["reason"],
            registry=r,
        )
        self.quarantine_items = Gauge(
            "guard_quarantine_items", "Items in the quarantine's index.", registry=r
        )
        self.quarantine_bytes = Gauge(
            "guard_quarantine_bytes", "Bytes of the quarantine's image files.", registry=r
        )
        for reason in QUARANTINE_DROP_REASONS:
            self.quarantine_dropped.labels(reason=reason)
        # The standard process_*, python_gc_* and python_info series. They sit on the default
        # registry only; each app has its own registry (fresh in tests, so never registered
        # twice). In multiprocess mode each worker still reports its own process.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.stage_duration.labels(stage="total", model="")

    def observe_stage(self, stage: str, seconds: float, model: str | None = None) -> None:
        """One latency observation; ``model`` defaults to the set this request resolved to."""
        name = request_model.get() if model is None else model
        self.stage_duration.labels(stage=stage, model=name).observe(seconds)

    def init_model(
        self, model: str, classes: int, detectors: Sequence[str] = ("detrigger",)
    ) -> None:
        """Create every bounded series at 0, so rate() and ratios work from the first scrape."""
        for detector in detectors:
            for c in range(classes):
                self.images.labels(model=model, predicted_class=str(c), detector=detector)
                self.images_flagged.labels(model=model, predicted_class=str(c), detector=detector)
            self.batch_size.labels(model=model, detector=detector)
            self.score.labels(model=model, detector=detector)
        for stage in STAGES:
            self.stage_duration.labels(stage=stage, model=model)
        self.quarantine_written.labels(model=model)
        self.unscorable.labels(model=model)
        self.unchanged_images.labels(model=model)
        self.queue_depth.labels(model=model).set(0)
        self.model_ready.labels(model=model).set(0)

    def init_upstream(self, model: str) -> None:
        for outcome in UPSTREAM_OUTCOMES:
            self.upstream_duration.labels(model=model, outcome=outcome)
        for kind in UPSTREAM_ERROR_KINDS:
            self.upstream_errors.labels(model=model, kind=kind)
        self.upstream_breaker_state.labels(model=model).set(0)
        self.upstream_ready.labels(model=model).set(0)
