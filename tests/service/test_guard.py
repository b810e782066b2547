"""The guard without HTTP: what a second transport (KServe V2) would call."""

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from service.errors import InvalidImage, ModelNotReady, TooManyImages, UnknownModel
from service.guard import Guard, ImageInput, Outcome
from service.metrics import Metrics
from service.settings import Mode, Settings
from tests.support.tiny_models import TinySpec, add_trigger, clean_image, png_bytes

T = TypeVar("T")


def run_guard(settings: Settings, body: Callable[[Guard], Awaitable[T]]) -> T:
    async def main() -> T:
        guard = Guard(settings, Metrics())
        await guard.start()
        await guard.wait_loaded()
        try:
            return await body(guard)
        finally:
            await guard.stop()

    return asyncio.run(main())


def test_classify_in_each_mode(tiny_set: Path, rgb_set: Path) -> None:
    spec = TinySpec()
    images = [
        ImageInput(png_bytes(clean_image(spec, 2)), "c.png"),
        ImageInput(png_bytes(add_trigger(clean_image(spec, 5))), None),
    ]

    async def body(guard: Guard) -> dict[Mode, Outcome]:
        assert guard.default_model == "tiny"
        assert guard.readiness() == (True, {"tiny": "ready", "tinyrgb": "ready"})
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
        return guard.readiness()

    ready, reasons = run_guard(
        Settings(models=[tiny_set, tmp_path / "missing"], max_images_per_request=2), body
    )
    assert ready is False
    assert "manifest.json not found" in reasons["missing"]
