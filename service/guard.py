"""The guard: decode, batch, run both models, decide. Knows nothing about HTTP.

The /classify route calls :meth:`Guard.classify` (image files); the KServe V2 data plane calls
:meth:`Guard.detect` (decoded tensors). Both run the model set's target backend: local (the
target here) or proxy (the target on an upstream V2 server), see service.target.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service.engine import BatchEngine, R
from service.errors import (
    InvalidParameter,
    InvalidRequest,
    ModelFailed,
    ModelLoadError,
    ModelNotReady,
    TooManyImages,
    TooManyPixels,
    UnknownModel,
    UnscorableImage,
)
from service.imaging import decode, pixels
from service.manifest import read_manifest
from service.metrics import Metrics
from service.modelset import ModelSet
from service.scoring import Decisions, Rule
from service.settings import Detector, Mode, Settings
from service.target import Call, Detection, LocalTarget, ProxyTarget, Target
from service.upstream.client import UpstreamClient, new_http_client

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
    target: Target | None = None

    @property
    def engine(self) -> BatchEngine | None:
        return None if self.target is None else self.target.engine


@dataclass(frozen=True)
class ImageInput:
    data: bytes
    filename: str | None = None


@dataclass(frozen=True)
class ImageResult:
    index: int
    filename: str | None
    flagged: bool
    predicted: int
    detriggered: int | None  # None when the detector runs no AE (STRIP)
    score: float
    answer: int | None  # the class the caller should use under the mode; None when blocked


@dataclass(frozen=True)
class Outcome:
    model_set: ModelSet
    mode: Mode
    results: list[ImageResult]
    rule: Rule  # the detector that decided, its score's name, threshold and rule


def answer_for(mode: Mode, flagged: bool, predicted: int, detriggered: int | None) -> int | None:
    if mode is Mode.flag:
        return predicted
    if mode is Mode.block:
        return None if flagged else predicted
    return detriggered  # repair: the class once any trigger is removed


def _detriggered(decisions: Decisions, i: int) -> int | None:
    return None if decisions.detriggered is None else int(decisions.detriggered[i])


class Guard:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.slots: dict[str, Slot] = {}
        self.decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        # Requests of many pixels decode here, one at a time, never in front of small ones.
        self.bulk_decode_pool = ThreadPoolExecutor(1, thread_name_prefix="decode-bulk")
        self._loader: asyncio.Task[None] | None = None
        self.default_model: str | None = None
        # The ONE pooled HTTP client of every upstream (proxy mode only).
        self.http: httpx.AsyncClient | None = None
        self.config_errors: dict[str, str] = {}

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
        target = self._target(slot.name, model_set)
        target.start()
        detectors = [d.value for d in model_set.detectors]
        self.metrics.init_model(slot.name, len(manifest.classes), detectors)
        self.metrics.model_info.labels(
            model=slot.name,
            provider=model_set.provider,
            target_sha256=manifest.target.sha256[:12],
            detrigger_sha256=manifest.detrigger.sha256[:12],
            decision_rule=manifest.decision.rule,
        ).set(1)
        slot.model_set, slot.target = model_set, target
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
                "target_mode": target.mode,
                "detectors": detectors,
            },
        )

    def _target(self, name: str, model_set: ModelSet) -> LocalTarget | ProxyTarget:
        s = self.settings

        def engine(runs: Mapping[str, Callable[[np.ndarray], R]]) -> BatchEngine[R]:
            return BatchEngine(
                model_set,
                max_batch_size=s.max_batch_size,
                max_wait_s=s.max_batch_wait_ms / 1000.0,
                max_queue_images=s.max_queue_images,
                retry_after_s=s.retry_after_seconds,
                metrics=self.metrics,
                runs=runs,
            )

        upstream = s.upstreams.get(name)
        if upstream is None or self.http is None:
            runs: dict[str, Callable[[np.ndarray], Any]] = {
                Detector.detrigger.value: model_set.infer_scored
            }
            if model_set.strip is not None:
                runs[Detector.strip.value] = model_set.strip_scored
            return LocalTarget(model_set, engine(runs))
        client = UpstreamClient(self.http, upstream, s, self.metrics, name)
        # Proxy mode: only the AE runs here (batched); STRIP's copies are built per request.
        return ProxyTarget(
            model_set,
            engine({Detector.detrigger.value: model_set.detrigger_only}),
            client,
            s.upstream_probe_interval_s,
        )

    async def stop(self) -> None:
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loader
        for slot in self.slots.values():
            if slot.target is not None:
                await slot.target.stop()
        if self.http is not None:
            await self.http.aclose()
        for pool in (self.decode_pool, self.bulk_decode_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    # --- queries --------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, dict[str, str]]:
        if not self.slots:
            return False, {"guard": "not started"}
        reasons = {name: slot.reason for name, slot in self.slots.items()}
        ready = all(slot.state is SlotState.ready for slot in self.slots.values())
        for name, slot in self.slots.items():
            if slot.target is not None:
                target_ready, why = slot.target.readiness()
                if not target_ready:
                    ready, reasons[name] = False, why
        reasons.update(self.config_errors)
        return ready and not self.config_errors, reasons

    def resolve(self, model: str | None) -> tuple[ModelSet, Target]:
        if self.default_model is None:
            raise ModelNotReady("the guard has not started")
        name = model or self.default_model
        slot = self.slots.get(name)
        if slot is None:
            raise UnknownModel(
                f"no model set named {name!r}", accepted=f"model one of {sorted(self.slots)}"
            )
        if slot.model_set is None or slot.target is None:
            raise ModelNotReady(f"model set {name!r} is not ready: {slot.reason}")
        return slot.model_set, slot.target

    def detector_for(self, model_set: ModelSet, detector: Detector | None, mode: Mode) -> Detector:
        """The detector of a request: the one it names, else GUARD_DEFAULT_DETECTOR where it
        can run (the set offers it; STRIP not under mode repair), else detrigger. A named
        detector the set does not offer is an error, and so is a named STRIP under mode repair
        (STRIP flags, it has no repaired class to answer)."""
        if detector is None:
            default = self.settings.default_detector
            usable = default in model_set.detectors and not (
                default is Detector.strip and mode is Mode.repair
            )
            detector = default if usable else Detector.detrigger
        elif detector is Detector.strip:
            model_set.require_strip()  # DetectorNotAvailable when the set has no STRIP bank
        if detector is Detector.strip and mode is Mode.repair:
            raise InvalidParameter(
                "mode repair needs detector detrigger: STRIP flags images but gives no class "
                "with the trigger removed",
                accepted="mode flag or block with detector strip, or detector detrigger",
            )
        return detector

    # --- the work -------------------------------------------------------------------------
    async def classify(
        self,
        images: list[ImageInput],
        *,
        model: str | None = None,
        mode: Mode | None = None,
        resize: bool = False,
        call: Call | None = None,
        detector: Detector | None = None,
    ) -> Outcome:
        mode = mode or self.settings.default_mode
        model_set, target = self.resolve(model)
        chosen = self.detector_for(model_set, detector, mode)
        if not images:
            raise InvalidRequest("no images in the request")
        self.check_count(len(images))

        x = await self.decode(images, model_set, resize)
        filenames = [image.filename for image in images]
        detection = await self._judge(x, target, model_set, mode, call or Call(), chosen, filenames)
        decisions = detection.decisions
        results = []
        for i, image in enumerate(images):
            predicted = int(decisions.predicted[i])
            detriggered = _detriggered(decisions, i)
            flagged = bool(decisions.flagged[i])
            score = float(decisions.score[i])
            results.append(
                ImageResult(
                    i,
                    image.filename,
                    flagged,
                    predicted,
                    detriggered,
                    score,
                    answer_for(mode, flagged, predicted, detriggered),
                )
            )
        return Outcome(model_set, mode, results, model_set.rule(chosen))

    def check_count(self, n: int) -> None:
        limit = self.settings.max_images_per_request
        if n > limit:
            raise TooManyImages(
                f"{n} images in one request; the limit is {limit}",
                accepted=f"at most {limit} images per request",
            )

    async def detect(
        self,
        x: np.ndarray,
        target: Target,
        model_set: ModelSet,
        mode: Mode,
        call: Call,
        detector: Detector | None = None,
    ) -> Detection:
        """Decoded images (N, C, H, W) float32 in [0, 1] -> the detection, counted and logged."""
        chosen = self.detector_for(model_set, detector, mode)
        if x.shape[0] == 0:
            raise InvalidRequest("no images in the request")
        self.check_count(x.shape[0])
        return await self._judge(x, target, model_set, mode, call, chosen, [None] * x.shape[0])

    async def _judge(
        self,
        x: np.ndarray,
        target: Target,
        model_set: ModelSet,
        mode: Mode,
        call: Call,
        detector: Detector,
        filenames: Sequence[str | None],
    ) -> Detection:
        """Run the detector, refuse what it could not judge, count the rest.

        A non-finite score means non-finite logits (NaN or infinity on x or its de-triggered
        or superimposed copies); its comparison with the threshold would be False, i.e. an
        unflagged, answered image. Fail closed instead: no verdict, no answer. (In proxy mode
        the upstream's non-finite logits are refused earlier, as its error: 502.)
        """
        detection = await target.detect(x, call, detector)
        unscorable = np.flatnonzero(~np.isfinite(detection.decisions.score))
        if unscorable.size:
            self.metrics.unscorable.labels(model=model_set.name).inc(unscorable.size)
            raise UnscorableImage(
                f"image(s) {unscorable.tolist()} of {x.shape[0]} gave non-finite logits on model "
                f"set {model_set.name!r}; the guard cannot judge them and answers no image of "
                "this request"
            )
        self.count(model_set, mode, detection.decisions, filenames, detector)
        return detection

    def count(
        self,
        model_set: ModelSet,
        mode: Mode,
        decisions: Decisions,
        filenames: Sequence[str | None],
        detector: Detector = Detector.detrigger,
    ) -> None:
        """Count every image and log each flagged one."""
        name = model_set.name
        rule = model_set.rule(detector)
        classes = model_set.manifest.classes
        for i, filename in enumerate(filenames):
            predicted = int(decisions.predicted[i])
            labels = {"model": name, "predicted_class": str(predicted), "detector": detector.value}
            self.metrics.images.labels(**labels).inc()
            if bool(decisions.flagged[i]):
                self.metrics.images_flagged.labels(**labels).inc()
                detriggered = _detriggered(decisions, i)
                logger.warning(
                    "flagged image",
                    extra={
                        "model": name,
                        "mode": mode.value,
                        "detector": detector.value,
                        "index": i,
                        "image_filename": (filename or "")[:200] or None,
                        "predicted": classes[predicted],
                        "detriggered": None if detriggered is None else classes[detriggered],
                        "score": round(float(decisions.score[i]), 6),
                        "score_name": rule.score_name,
                    },
                )

    async def decode(
        self, images: Sequence[ImageInput], model_set: ModelSet, resize: bool
    ) -> np.ndarray:
        """Image files -> (N, C, H, W) float32 in [0, 1], off the event loop.

        First their headers alone (cheap): the request's pixel budget, each image's limit and
        size. Then the decoding, on the shared pool, or on the bulk lane for a request of many
        pixels, so that a few huge requests cannot starve every small one.
        """
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        total = await loop.run_in_executor(
            self.decode_pool, self._pixels, images, model_set, resize
        )
        lane = (
            self.bulk_decode_pool if total > self.settings.bulk_decode_pixels else self.decode_pool
        )
        x = await loop.run_in_executor(lane, self._decode_all, images, model_set, resize)
        self.metrics.stage_duration.labels(stage="decode").observe(time.perf_counter() - started)
        return x

    def _pixels(self, images: Sequence[ImageInput], model_set: ModelSet, resize: bool) -> int:
        _, h, w = model_set.input_chw
        budget = self.settings.max_request_pixels
        total = 0
        for i, image in enumerate(images):
            total += pixels(
                image.data,
                index=i,
                filename=image.filename,
                height=h,
                width=w,
                resize=resize,
                max_pixels=self.settings.max_image_pixels,
            )
            if total > budget:
                raise TooManyPixels(
                    f"the {len(images)} images of this request decode to more than {budget} "
                    f"pixels in all (over the budget at image {i})",
                    accepted=f"at most {budget} decoded pixels per request, all images together",
                )
        return total

    def _decode_all(
        self, images: Sequence[ImageInput], model_set: ModelSet, resize: bool
    ) -> np.ndarray:
        c, h, w = model_set.input_chw
        out = np.empty((len(images), c, h, w), dtype=np.float32)  # (N, C, H, W) in [0, 1]
        for i, image in enumerate(images):
            out[i] = decode(
                image.data,
                index=i,
                filename=image.filename,
                channels=c,
                height=h,
                width=w,
                resize=resize,
                max_pixels=self.settings.max_image_pixels,
            )
        return out
