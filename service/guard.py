"""The request path: decode, detect, judge, count. Knows nothing about HTTP.

The /classify route calls :meth:`Guard.classify` (image files); the KServe V2 data plane calls
:meth:`Guard.decode` for encoded files and :meth:`Guard.detect` (decoded tensors). Both run
the model set's engine (service.engine), whose backend runs the target classifier here (local)
or on an upstream V2 server (proxy); both go through one judging step, so that no image is
answered without a verdict.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from contract.errors import (
    InvalidParameter,
    InvalidRequest,
    TooManyImages,
    TooManyPixels,
    UnscorableImage,
)
from contract.modes import Detector, Mode
from contract.scoring import Decisions, Rule
from contract.unchanged import changed_rows
from service import tracing
from service.backends.base import Call, Detection
from service.engine import BatchEngine
from service.imaging import decode, pixels
from service.metrics import Metrics
from service.quarantine import Flagged, FolderStore, Quarantine, S3Store, Store
from service.repository import ModelRepository
from service.runtime.modelset import ModelSet
from service.settings import Settings

T = TypeVar("T")
logger = logging.getLogger("guard")
# A request's CPU work on at most this many bytes runs on the event loop: handing it to a
# worker thread (a wake-up there and one back, each often a scheduler slice on a busy
# machine) costs more than converting a few hundred kilobytes of pixels.
INLINE_BYTES = 256 * 1024


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
    detriggered: int | None  # the class on AE(x) (repaired: the repaired graph's); None: STRIP
    score: float
    answer: int | None  # the class the caller should use under the mode; None when blocked
    entropy: float | None = None  # detector both: STRIP's entropy beside the de-trigger score
    fired: tuple[Detector, ...] = ()  # the detectors whose own rule flagged the image
    # detector detrigger_or_repaired: the repaired graph's score beside the de-trigger score
    repaired_score: float | None = None


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
    return detriggered  # repair: the class once any trigger is removed (AE or repaired graph)


def _detriggered(decisions: Decisions, i: int) -> int | None:
    return None if decisions.detriggered is None else int(decisions.detriggered[i])


def quarantine_of(settings: Settings, metrics: Metrics) -> Quarantine | None:
    """The quarantine the settings ask for (a folder, or a bucket), or None when off."""
    store: Store
    if settings.quarantine_s3_url is not None:
        store = S3Store(
            settings.quarantine_s3_url,
            settings.quarantine_s3_endpoint_url,
            settings.quarantine_s3_region,
        )
    elif settings.quarantine_dir is not None:
        store = FolderStore(settings.quarantine_dir)
    else:
        return None
    return Quarantine(
        store,
        metrics,
        settings.quarantine_max_bytes,
        settings.quarantine_max_age_s,
        settings.quarantine_queue,
    )


# Detectors that cannot repair: STRIP gives no class with the trigger removed, and an image
# that only STRIP flags under detector both has none either.
CANNOT_REPAIR = (Detector.strip, Detector.both)


# The parts of each fused detector, in the order of Decisions.fired's columns.
PARTS = {
    Detector.both: (Detector.detrigger, Detector.strip),
    Detector.detrigger_or_repaired: (Detector.detrigger, Detector.repaired),
}


def fired(decisions: Decisions, i: int, detector: Detector) -> tuple[Detector, ...]:
    """The detectors whose own rule flagged image i: for a fused detector, either or both of
    its parts."""
    if decisions.fired is not None:
        parts = PARTS[detector]
        return tuple(d for d, f in zip(parts, decisions.fired[i], strict=True) if f)
    return (detector,) if bool(decisions.flagged[i]) else ()


class Guard:
    """The request path: decode, detect (through the set's engine), judge, count."""

    def __init__(self, settings: Settings, metrics: Metrics, repository: ModelRepository) -> None:
        self.settings = settings
        self.metrics = metrics
        self.repository = repository
        self.decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        # Requests of many pixels decode here, one at a time, never in front of small ones.
        self.bulk_decode_pool = ThreadPoolExecutor(1, thread_name_prefix="decode-bulk")
        self.quarantine = quarantine_of(settings, metrics)

    def start(self) -> None:
        if self.quarantine is not None:
            self.quarantine.start()

    def stop(self) -> None:
        for pool in (self.decode_pool, self.bulk_decode_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        if self.quarantine is not None:
            self.quarantine.stop()

    async def offload(self, fn: Callable[..., T], *args: Any, nbytes: int | None = None) -> T:
        """Run CPU work of a request (e.g. converting a V2 tensor) on the decode pool, or here
        when it works on ``nbytes`` of at most INLINE_BYTES."""
        if nbytes is not None and nbytes <= INLINE_BYTES:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.decode_pool, fn, *args)

    def detector_for(self, model_set: ModelSet, detector: Detector | None, mode: Mode) -> Detector:
        """The detector of a request: the one it names, else the set's default
        (ModelSet.default_detector: GUARD_DEFAULT_DETECTOR where the set offers it, else the
        set's own) where it can run (strip or both not under mode repair), else detrigger. A
        named detector the set does not offer is an error, and so is a named strip or both
        under mode repair (STRIP flags, it has no repaired class to answer; detrigger answers
        with the class on AE(x), repaired with the repaired graph's, detrigger_or_repaired
        with the repaired graph's where its rule fired, else the class on AE(x))."""
        if detector is None:
            default = model_set.default_detector(self.settings.default_detector)
            usable = not (default in CANNOT_REPAIR and mode is Mode.repair)
            detector = default if usable else Detector.detrigger
        else:
            model_set.require(detector)  # DetectorNotAvailable when the set lacks its entry
        if detector in CANNOT_REPAIR and mode is Mode.repair:
            raise InvalidParameter(
                f"mode repair needs detector detrigger, repaired or detrigger_or_repaired: "
                f"{detector.value} flags images with STRIP, which gives no class with the "
                "trigger removed",
                accepted=f"mode flag or block with detector {detector.value}, or detector "
                "detrigger, repaired or detrigger_or_repaired",
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
        model_set, engine = self.repository.resolve(model)
        chosen = self.detector_for(model_set, detector, mode)
        if not images:
            raise InvalidRequest("no images in the request")
        self.check_count(len(images))

        x = await self.decode(images, model_set, resize)
        filenames = [image.filename for image in images]
        originals = [image.data for image in images]
        detection = await self._judge(
            x, engine, model_set, mode, call or Call(), chosen, filenames, originals
        )
        decisions = detection.decisions
        results = []
        for i, image in enumerate(images):
            predicted = int(decisions.predicted[i])
            detriggered = _detriggered(decisions, i)
            flagged = bool(decisions.flagged[i])
            score = float(decisions.score[i])
            entropy = None if decisions.entropy is None else float(decisions.entropy[i])
            repaired = decisions.repaired_score
            results.append(
                ImageResult(
                    i,
                    image.filename,
                    flagged,
                    predicted,
                    detriggered,
                    score,
                    answer_for(mode, flagged, predicted, detriggered),
                    entropy,
                    fired(decisions, i, chosen),
                    None if repaired is None else float(repaired[i]),
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
        engine: BatchEngine[Any],
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
        return await self._judge(x, engine, model_set, mode, call, chosen, [None] * x.shape[0])

    async def _judge(
        self,
        x: np.ndarray,
        engine: BatchEngine[Any],
        model_set: ModelSet,
        mode: Mode,
        call: Call,
        detector: Detector,
        filenames: Sequence[str | None],
        originals: Sequence[bytes] | None = None,
    ) -> Detection:
        """Run the detector, refuse what it could not judge, count the rest.

        A non-finite score means non-finite logits (NaN or infinity on x or its de-triggered
        or superimposed copies); its comparison with the threshold would be False, i.e. an
        unflagged, answered image. Fail closed instead: no verdict, no answer; with detector
        both, when either of its scores is not finite. (In proxy mode the upstream's
        non-finite logits are refused earlier, as its error: 502.)
        """
        detection = await engine.detect(x, call, detector)
        unscorable = np.flatnonzero(~detection.decisions.finite())
        if unscorable.size:
            self.metrics.unscorable.labels(model=model_set.name).inc(unscorable.size)
            raise UnscorableImage(
                f"image(s) {unscorable.tolist()} of {x.shape[0]} gave non-finite logits on model "
                f"set {model_set.name!r}; the guard cannot judge them and answers no image of "
                "this request"
            )
        self.count(model_set, mode, detection.decisions, filenames, detector)
        ae = detection.detriggered_images
        if detector in (Detector.detrigger, Detector.detrigger_or_repaired) and ae is not None:
            unchanged = x.shape[0] - int(changed_rows(x, ae).sum())
            self.metrics.unchanged_images.labels(model=model_set.name).inc(unchanged)
        if self.quarantine is not None:
            self._quarantine(x, model_set, mode, call, detection, originals)
        return detection

    def _quarantine(
        self,
        x: np.ndarray,
        model_set: ModelSet,
        mode: Mode,
        call: Call,
        detection: Detection,
        originals: Sequence[bytes] | None,
    ) -> None:
        """Hand each flagged image to the quarantine's writer (never waits, never raises)."""
        assert self.quarantine is not None
        decisions = detection.decisions
        rule = model_set.rule(detection.detector)
        ae = detection.detriggered_images
        for i in np.flatnonzero(decisions.flagged).tolist():
            self.quarantine.submit(
                Flagged(
                    request_id=call.request_id,
                    model=model_set.name,
                    detector=detection.detector.value,
                    mode=mode.value,
                    score=float(decisions.score[i]),
                    score_name=rule.score_name,
                    threshold=rule.threshold,
                    decision_rule=rule.rule,
                    predicted=int(decisions.predicted[i]),
                    detriggered=_detriggered(decisions, i),
                    original=None if originals is None else originals[i],
                    pixels=x[i],
                    detriggered_pixels=None if ae is None else ae[i],
                    time=time.time(),
                )
            )

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
        score = self.metrics.score.labels(model=name, detector=detector.value)
        for i, filename in enumerate(filenames):
            predicted = int(decisions.predicted[i])
            labels = {"model": name, "predicted_class": str(predicted), "detector": detector.value}
            self.metrics.images.labels(**labels).inc()
            score.observe(float(decisions.score[i]))
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
                        **_fused_fields(decisions, i, detector),
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
        with tracing.span("decode", model=model_set.name, images=len(images)):
            total = await loop.run_in_executor(
                self.decode_pool, self._pixels, images, model_set, resize
            )
            lane = (
                self.bulk_decode_pool
                if total > self.settings.bulk_decode_pixels
                else self.decode_pool
            )
            x = await loop.run_in_executor(lane, self._decode_all, images, model_set, resize)
        self.metrics.observe_stage("decode", time.perf_counter() - started, model_set.name)
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


def _fused_fields(decisions: Decisions, i: int, detector: Detector) -> dict[str, Any]:
    """What a flagged image's log line adds under a fused detector: the second detector's
    score and the detectors that fired; nothing under the others."""
    if decisions.fired is None:
        return {}
    out: dict[str, Any] = {"fired": [d.value for d in fired(decisions, i, detector)]}
    if decisions.entropy is not None:
        out["strip_entropy"] = round(float(decisions.entropy[i]), 6)
    if decisions.repaired_score is not None:
        out["repaired_score"] = round(float(decisions.repaired_score[i]), 6)
    return out
