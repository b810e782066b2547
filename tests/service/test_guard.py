"""The guard without HTTP: what a second transport (KServe V2) would call."""

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from prometheus_client import generate_latest

from contract.errors import (
    InvalidImage,
    ModelNotReady,
    TooManyImages,
    TooManyPixels,
    UnknownModel,
    UnscorableImage,
    WrongImageSize,
)
from contract.modes import Detector, Mode
from service.api.error_responses import status_of
from service.guard import Guard, ImageInput, Outcome
from service.metrics import Metrics
from service.runtime.modelset import Scored
from service.settings import Settings
from tests.support.guard import running_guard
from tests.support.promtext import parse, value
from tests.support.tiny_models import (
    TinySpec,
    add_trigger,
    build_model_set,
    clean_image,
    png_bytes,
)

T = TypeVar("T")


def run_guard(
    settings: Settings, body: Callable[[Guard], Awaitable[T]], metrics: Metrics | None = None
) -> T:
    async def main() -> T:
        async with running_guard(settings, metrics) as guard:
            return await body(guard)

    return asyncio.run(main())


def test_classify_in_each_mode(tiny_set: Path, rgb_set: Path) -> None:
    spec = TinySpec()
    images = [
        ImageInput(png_bytes(clean_image(spec, 2)), "c.png"),
        ImageInput(png_bytes(add_trigger(clean_image(spec, 5))), None),
    ]

    async def body(guard: Guard) -> dict[Mode, Outcome]:
        assert guard.repository.default_model == "tiny"
        assert guard.repository.readiness() == (True, {"tiny": "ready", "tinyrgb": "ready"})
        return {mode: await guard.classify(images, mode=mode) for mode in Mode}

    outcomes = run_guard(Settings(models=[tiny_set, rgb_set]), body)
    answers = {mode: [r.answer for r in o.results] for mode, o in outcomes.items()}
    assert answers == {Mode.flag: [2, 0], Mode.block: [2, None], Mode.repair: [2, 5]}
    flag = outcomes[Mode.flag]
    assert [r.flagged for r in flag.results] == [False, True]
    assert [r.filename for r in flag.results] == ["c.png", None]
    assert flag.model_set.name == "tiny"


def test_errors_are_domain_errors(tiny_set: Path, tmp_path: Path) -> None:
    good = ImageInput(png_bytes(clean_image(TinySpec(), 1)))

    async def body(guard: Guard) -> tuple[bool, dict[str, str]]:
        with pytest.raises(UnknownModel):
            await guard.classify([good], model="nope")
        with pytest.raises(ModelNotReady):  # the second folder has no manifest
            await guard.classify([good], model="missing")
        with pytest.raises(TooManyImages):
            await guard.classify([good] * 3)
        with pytest.raises(InvalidImage):
            await guard.classify([good, ImageInput(b"")])
        return guard.repository.readiness()

    ready, reasons = run_guard(
        Settings(models=[tiny_set, tmp_path / "missing"], max_images_per_request=2), body
    )
    assert ready is False
    assert "manifest.json not found" in reasons["missing"]


def test_an_image_whose_logits_are_not_finite_is_never_answered(tmp_path: Path) -> None:
    """Issue 19 #6 (fail-open): NaN scores compare False with the threshold, so an image whose
    de-triggered copy gave non-finite logits came back unflagged and answered, in block mode
    too, with the backdoor's class. The set's target gives -inf logits on an all-black image:
    here the trigger alone on black, whose de-triggered copy is all black."""
    spec = TinySpec(name="nonfinite", nonfinite_when_black=True)
    folder = build_model_set(tmp_path / "nonfinite", spec)
    black = np.zeros((spec.height, spec.width), dtype=np.uint8)
    trigger_only = ImageInput(png_bytes(add_trigger(black)), "t.png")
    clean = ImageInput(png_bytes(clean_image(spec, 3)), "c.png")
    metrics = Metrics()

    async def body(guard: Guard) -> list[int | None]:
        for mode in Mode:
            with pytest.raises(UnscorableImage, match=r"image\(s\) \[1\] of 2"):
                await guard.classify([clean, trigger_only], mode=mode)
        outcome = await guard.classify([clean], mode=Mode.block)  # the set still serves
        return [r.answer for r in outcome.results]

    assert run_guard(Settings(models=[folder]), body, metrics) == [3]
    assert status_of(UnscorableImage("x")) == 422
    scraped = parse(generate_latest(metrics.registry).decode())
    assert value(scraped, "guard_images_unscorable_total", model="nonfinite") == 3.0


def test_the_pixel_budget_is_checked_on_headers_before_decoding(tiny_set: Path) -> None:
    """Issue 19 #9: a request's files may decode to at most GUARD_MAX_REQUEST_PIXELS in all;
    a wrong size is refused from the header too, before any decoding."""
    spec = TinySpec()
    big = ImageInput(png_bytes(np.zeros((200, 200), dtype=np.uint8)), "big.png")
    small = ImageInput(png_bytes(clean_image(spec, 4)), "s.png")

    async def body(guard: Guard) -> int:
        with pytest.raises(TooManyPixels, match="more than 50000 pixels"):
            await guard.classify([big, big], resize=True)  # 80,000 pixels
        with pytest.raises(WrongImageSize):
            await guard.classify([big])
        outcome = await guard.classify([big, small], resize=True)  # 40,784: within budget
        return len(outcome.results)

    settings = Settings(models=[tiny_set], max_request_pixels=50_000)
    assert run_guard(settings, body) == 2
    assert status_of(TooManyPixels("x")) == 413


def test_a_request_of_many_pixels_cannot_hold_up_small_ones(tiny_set: Path) -> None:
    """Issue 19 #9: requests over GUARD_BULK_DECODE_PIXELS decode on their own lane. With that
    lane held, a big request waits and a small one is still answered."""
    spec = TinySpec()
    big = ImageInput(png_bytes(np.zeros((100, 100), dtype=np.uint8)), "big.png")
    small = ImageInput(png_bytes(clean_image(spec, 4)), "s.png")
    release = threading.Event()

    async def body(guard: Guard) -> tuple[bool, list[int | None], int]:
        guard.bulk_decode_pool.submit(release.wait)  # the bulk lane is busy until released
        waiting = asyncio.ensure_future(guard.classify([big], resize=True))
        answers = []
        for _ in range(3):
            outcome = await asyncio.wait_for(guard.classify([small]), timeout=10)
            answers += [r.answer for r in outcome.results]
        held = not waiting.done()
        release.set()
        done = await asyncio.wait_for(waiting, timeout=10)
        return held, answers, len(done.results)

    settings = Settings(models=[tiny_set], bulk_decode_pixels=5_000)
    assert run_guard(settings, body) == (True, [4, 4, 4], 1)


def test_detector_both_refuses_an_image_when_either_score_is_not_finite(tmp_path: Path) -> None:
    """Detector both flags on an OR of two comparisons, and NaN fails both: a NaN de-trigger
    score (the AE's copy of the trigger on black is all black: -inf logits) or a NaN STRIP
    entropy (made here by replacing one image's entropy after the real batch) must refuse the
    request, never answer the image as clean."""
    spec = TinySpec(name="nonfiniteboth", nonfinite_when_black=True, strip_n=4, both=(0.5, 0.3))
    folder = build_model_set(tmp_path / "nonfiniteboth", spec)
    black = np.zeros((spec.height, spec.width), dtype=np.uint8)
    trigger_only = ImageInput(png_bytes(add_trigger(black)), "t.png")
    clean = [ImageInput(png_bytes(clean_image(spec, k)), f"c{k}.png") for k in (3, 4)]

    async def body(guard: Guard) -> list[int | None]:
        with pytest.raises(UnscorableImage, match=r"image\(s\) \[1\] of 2"):
            await guard.classify([clean[0], trigger_only], detector=Detector.both)
        model_set, engine = guard.repository.resolve("nonfiniteboth")
        real = model_set.both_scored

        def nan_entropy(x: np.ndarray) -> Scored:
            scored = real(x)
            entropy = scored.decisions.entropy.copy()
            entropy[-1] = np.nan
            return replace(scored, decisions=replace(scored.decisions, entropy=entropy))

        engine.backend.batch_runs[Detector.both] = nan_entropy  # type: ignore[index]
        with pytest.raises(UnscorableImage, match=r"image\(s\) \[1\] of 2"):
            await guard.classify(clean, detector=Detector.both)
        engine.backend.batch_runs[Detector.both] = real  # type: ignore[index]
        outcome = await guard.classify(clean, detector=Detector.both, mode=Mode.block)
        return [r.answer for r in outcome.results]

    assert run_guard(Settings(models=[folder]), body) == [3, 4]


def test_images_the_gated_ae_returns_unchanged_are_counted(gated_set: Path, tiny_set: Path) -> None:
    """guard_unchanged_images_total: the images whose second target pass was skipped. The gated
    AE returns clean images bit for bit and changes triggered ones; an ungated AE changes all."""
    spec = TinySpec()
    clean = [ImageInput(png_bytes(clean_image(spec, k)), f"{k}.png") for k in (2, 3, 4)]
    triggered = ImageInput(png_bytes(add_trigger(clean_image(spec, 5))), "t.png")
    for folder, want in ((gated_set, 3.0), (tiny_set, 0.0)):
        metrics = Metrics()

        async def body(guard: Guard) -> list[bool]:
            outcome = await guard.classify([*clean, triggered])
            return [r.flagged for r in outcome.results]

        assert run_guard(Settings(models=[folder]), body, metrics) == [False] * 3 + [True]
        scraped = parse(generate_latest(metrics.registry).decode())
        assert value(scraped, "guard_unchanged_images_total", model="tiny") == want
