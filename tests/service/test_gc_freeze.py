"""Once its sets are loaded, the app leaves what exists out of the cyclic garbage collector's
passes (a full pass held the event loop for tens of milliseconds), and lets it go again when it
stops (service.main._freeze_when_loaded)."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from service.main import create_app
from service.settings import Settings


def test_the_loaded_app_is_left_out_of_gc_passes_until_it_stops(tiny_set: Path) -> None:
    async def main() -> tuple[int, int, int]:
        before = gc.get_freeze_count()
        app = create_app(Settings(models=[tiny_set]))
        async with app.router.lifespan_context(app):
            await app.state.repository.wait_loaded()
            for _ in range(200):  # the freezer runs right after the loader ends
                if gc.get_freeze_count():
                    break
                await asyncio.sleep(0.01)
            frozen = gc.get_freeze_count()
            assert app.state.repository.readiness()[0]
        return before, frozen, gc.get_freeze_count()

    before, frozen, after = asyncio.run(main())
    assert before == 0 and frozen > 10_000 and after == 0
