"""Every model set shipped in models/ loads and becomes ready exactly as the service loads it:
manifest, sha256 of every file, graphs, the STRIP bank where the manifest names one, warm-up.
(The audit's repaired copies once copied the STRIP entry without its bank and never became
ready.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from contract.modes import Detector
from service.settings import Settings
from tests.support.guard import running_guard

pytestmark = pytest.mark.slow
MODELS = Path(__file__).resolve().parents[2] / "models"
SHIPPED = sorted(p for p in MODELS.iterdir() if (p / "manifest.json").exists())


def test_the_shipped_folders_are_the_nine_sets() -> None:
    names = {p.name for p in SHIPPED}
    for base in ("mnist", "fashion-mnist", "cifar10"):
        assert {base, f"{base}-clean", f"{base}-repaired"} <= names


def test_every_shipped_set_loads_and_becomes_ready() -> None:
    settings = Settings(models=SHIPPED, max_batch_size=8)

    async def main() -> tuple[bool, dict[str, str], dict[str, tuple[Detector, ...]]]:
        async with running_guard(settings) as guard:
            ready, reasons = guard.repository.readiness()
            detectors = {
                name: slot.model_set.detectors
                for name, slot in guard.repository.slots.items()
                if slot.model_set is not None
            }
            return ready, reasons, detectors

    ready, reasons, detectors = asyncio.run(main())
    assert ready, reasons
    assert set(reasons.values()) == {"ready"}
    # A set whose manifest names a STRIP bank offers STRIP: the repaired ones included.
    for folder in SHIPPED:
        if '"strip"' in (folder / "manifest.json").read_text():
            assert Detector.strip in detectors[folder.name], folder.name
            # ... and every set with STRIP carries detector both, calibrated with it.
            assert Detector.both in detectors[folder.name], folder.name
