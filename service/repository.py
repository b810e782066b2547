"""The model repository: which model sets are configured, their loading, warm-up, readiness,
and the engine (and backend) each one is served by. Knows nothing of requests.

At start the manifests are read, then every set is loaded and warmed in the background; a set
that fails is kept, marked failed with its reason, so /readyz and /v1/models can say why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import httpx

from contract.errors import ModelFailed, ModelLoadError, ModelNotReady, UnknownModel
from contract.manifest import read_manifest
from service.backends.local import LocalBackend
from service.backends.proxy import ProxyBackend
from service.backends.upstream import UpstreamClient, new_http_client
from service.backends.upstream_grpc import GrpcUpstreamClient
from service.engine import BatchEngine
from service.metrics import Metrics, request_model
from service.runtime.modelset import ModelSet
from service.settings import Settings

logger = logging.getLogger("guard")


class SlotState(str, Enum):
    loading = "loading"
    ready = "ready"
    failed = "failed"


@dataclass
class Slot:
    """One configured model set and where it stands."""

    name: str
    folder: Path
    state: SlotState = SlotState.loading
    reason: str = "loading"
    model_set: ModelSet | None = None
    engine: BatchEngine[Any] | None = None


class ModelRepository:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.slots: dict[str, Slot] = {}
        self.default_model: str | None = None
        self.config_errors: dict[str, str] = {}
        # The ONE pooled HTTP client of every upstream (proxy mode only).
        self.http: httpx.AsyncClient | None = None
        self._loader: asyncio.Task[None] | None = None

    def _add_slot(self, folder: Path) -> None:
        """Register a configured folder under its manifest name (the folder name when the
        manifest cannot be read). A failed slot is kept, so /readyz and /v1/models show why."""
        reason = None
        try:
            name = read_manifest(folder).name
        except ModelLoadError as exc:
            name, reason = folder.name or str(folder), exc.message
        if name in self.slots:
            reason = reason or f"{folder}: model name {name!r} is already used by another folder"
            name = f"{name}@{folder}"
        slot = Slot(name, folder)
        if reason is not None:
            slot.state, slot.reason = SlotState.failed, reason
            logger.error("model set failed to load", extra={"model": name, "reason": reason})
        self.slots[name] = slot
        self.metrics.model_ready.labels(model=name).set(0)

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Read the manifests, then load and warm every set in the background.

        /healthz answers while the sets load; /readyz says 503 until all are warm.
        """
        for folder in self.settings.models:
            self._add_slot(folder)
        self.default_model = next(iter(self.slots))
        for name in self.settings.upstreams:
            if name not in self.slots:
                reason = f"GUARD_UPSTREAMS names {name!r}, which is no configured model set"
                self.config_errors[f"upstream:{name}"] = reason
                logger.error("bad upstream configuration", extra={"reason": reason})
        if self.settings.upstreams:
            self.http = new_http_client(self.settings)
        self._loader = asyncio.get_running_loop().create_task(self._load_all(), name="loader")

    async def wait_loaded(self) -> None:
        if self._loader is not None:
            await asyncio.shield(self._loader)

    async def _load_all(self) -> None:
        for slot in self.slots.values():
            if slot.state is SlotState.loading:
                await self._load(slot)

    async def _load(self, slot: Slot) -> None:
        s = self.settings
        warm_sizes = tuple(sorted({1, s.max_batch_size}))
        started = time.perf_counter()

        def load_and_warm() -> ModelSet:
            model_set = ModelSet.load(slot.folder, s)
            model_set.warm_up(warm_sizes)
            return model_set

        try:
            model_set = await asyncio.get_running_loop().run_in_executor(None, load_and_warm)
        except (ModelLoadError, ModelFailed) as exc:
            slot.state, slot.reason = SlotState.failed, exc.message
            logger.error(
                "model set failed to load", extra={"model": slot.name, "reason": exc.message}
            )
            return
        except Exception as exc:  # an unexpected failure must still leave the set unserved
            slot.state, slot.reason = SlotState.failed, f"{slot.folder}: {exc!r}"
            logger.exception("model set failed to load", extra={"model": slot.name})
            return
        manifest = model_set.manifest
        engine = self._engine(slot.name, model_set)
        engine.start()
        detectors = [d.value for d in model_set.detectors]
        self.metrics.init_model(slot.name, len(manifest.classes), detectors)
        self.metrics.model_info.labels(
            model=slot.name,
            provider=model_set.provider,
            target_sha256=manifest.target.sha256[:12],
            detrigger_sha256=manifest.detrigger.sha256[:12],
            decision_rule=manifest.decision.rule,
        ).set(1)
        for detector in model_set.detectors:
            rule = model_set.rule(detector)
            if rule.rule != "class_change":  # class_change flags on the classes, not a score
                self.metrics.threshold.labels(
                    model=slot.name, detector=detector.value, score=rule.score_name, rule=rule.rule
                ).set(rule.threshold)
            if rule.strip_threshold is not None:  # detector both: its second threshold
                self.metrics.threshold.labels(
                    model=slot.name, detector=detector.value, score="strip_entropy", rule=rule.rule
                ).set(rule.strip_threshold)
            if rule.repaired_threshold is not None:  # detrigger_or_repaired: the repaired graph's
                self.metrics.threshold.labels(
                    model=slot.name,
                    detector=detector.value,
                    score=f"repaired_{rule.repaired_score_name}",
                    rule=rule.rule,
                ).set(rule.repaired_threshold)
        slot.model_set, slot.engine = model_set, engine
        slot.state, slot.reason = SlotState.ready, "ready"
        self.metrics.model_ready.labels(model=slot.name).set(1)
        logger.info(
            "model set ready",
            extra={
                "model": slot.name,
                "provider": model_set.provider,
                "target_sha256": manifest.target.sha256,
                "detrigger_sha256": manifest.detrigger.sha256,
                "load_seconds": round(time.perf_counter() - started, 3),
                "warmup_batch_sizes": list(warm_sizes),
                "target_mode": engine.backend.mode,
                "detectors": detectors,
            },
        )

    def _engine(self, name: str, model_set: ModelSet) -> BatchEngine[Any]:
        """The set's engine, in front of its backend: local, or proxy when GUARD_UPSTREAMS
        names the set."""
        s = self.settings
        upstream = s.upstreams.get(name)
        backend: LocalBackend | ProxyBackend
        if upstream is None or self.http is None:
            backend = LocalBackend(model_set)
        else:
            transport = GrpcUpstreamClient if upstream.protocol == "grpc" else UpstreamClient
            client = transport(self.http, upstream, s, self.metrics, name)
            backend = ProxyBackend(model_set, client, s.upstream_probe_interval_s)
        return BatchEngine(
            name,
            backend,
            max_batch_size=s.max_batch_size,
            max_wait_s=s.max_batch_wait_ms / 1000.0,
            max_queue_images=s.max_queue_images,
            retry_after_s=s.retry_after_seconds,
            metrics=self.metrics,
        )

    async def stop(self) -> None:
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loader
        for slot in self.slots.values():
            if slot.engine is not None:
                await slot.engine.stop()
        if self.http is not None:
            await self.http.aclose()

    # --- queries --------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, dict[str, str]]:
        if not self.slots:
            return False, {"guard": "not started"}
        reasons = {name: slot.reason for name, slot in self.slots.items()}
        ready = all(slot.state is SlotState.ready for slot in self.slots.values())
        for name, slot in self.slots.items():
            if slot.engine is not None:
                backend_ready, why = slot.engine.backend.readiness()
                if not backend_ready:
                    ready, reasons[name] = False, why
        reasons.update(self.config_errors)
        return ready and not self.config_errors, reasons

    def find(self, name: str) -> Slot:
        """A set by its name or, in proxy mode, by its upstream's model name (so that a client
        of the upstream changes only the host)."""
        slot = self.slots.get(name)
        if slot is None:
            for candidate_name, candidate in self.slots.items():
                upstream = self.settings.upstreams.get(candidate_name)
                if upstream is not None and upstream.model == name:
                    return candidate
            raise UnknownModel(
                f"no model named {name!r}", accepted=f"a model one of {sorted(self.slots)}"
            )
        return slot

    def resolve(self, model: str | None) -> tuple[ModelSet, BatchEngine[Any]]:
        """A ready set by name, the default set when None."""
        if self.default_model is None:
            raise ModelNotReady("the guard has not started")
        name = model or self.default_model
        slot = self.slots.get(name)
        if slot is None:
            raise UnknownModel(
                f"no model set named {name!r}", accepted=f"model one of {sorted(self.slots)}"
            )
        if slot.model_set is None or slot.engine is None:
            raise ModelNotReady(f"model set {name!r} is not ready: {slot.reason}")
        request_model.set(name)  # a configured set's name: a bounded label value
        return slot.model_set, slot.engine
