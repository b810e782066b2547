"""The batching engine, driven directly (no HTTP) with a real ONNX Runtime model set."""

import asyncio
from pathlib import Path

import numpy as np
import pytest

from contract.errors import QueueFull
from contract.modes import Detector
from contract.scoring import Decisions
from service.backends.base import Call
from service.backends.local import LocalBackend
from service.engine import BatchEngine
from service.metrics import Metrics
from service.runtime.modelset import ModelSet
from service.settings import Settings
from tests.support.tiny_models import TinySpec, add_trigger, clean_image


@pytest.fixture(scope="module")
def model_set(tiny_set: Path) -> ModelSet:
    return ModelSet.load(tiny_set, Settings(models=[tiny_set]))


DETRIGGER = Detector.detrigger


def images(n: int, triggered: bool = False) -> np.ndarray:
    spec = TinySpec()
    out = []
    for i in range(n):
        im = clean_image(spec, 1 + i % 9, seed=i)
        out.append(add_trigger(im) if triggered else im)
    return np.stack(out)[:, None].astype(np.float32) / 255.0


def engine(model_set: ModelSet, metrics: Metrics, **kw: float) -> BatchEngine:
    args = dict(max_batch_size=8, max_wait_s=0.05, max_queue_images=64, retry_after_s=2)
    args.update(kw)
    backend = LocalBackend(model_set)
    return BatchEngine(model_set.name, backend, metrics=metrics, **args)  # type: ignore[arg-type]


async def decisions(eng: BatchEngine, x: np.ndarray, detector: Detector = DETRIGGER) -> Decisions:
    return (await eng.detect(x, Call(), detector)).decisions


def batch_sizes(metrics: Metrics) -> tuple[float, float]:
    labels = {"model": "tiny", "detector": "detrigger"}
    count = metrics.registry.get_sample_value("guard_batch_size_count", labels)
    total = metrics.registry.get_sample_value("guard_batch_size_sum", labels)
    return count or 0.0, total or 0.0


def test_concurrent_requests_share_batches_and_keep_order(model_set: ModelSet) -> None:
    metrics = Metrics()
    metrics.init_model("tiny", 10)

    async def main() -> list:
        eng = engine(model_set, metrics)
        eng.start()
        try:
            # 6 requests of 1..3 images arrive together: 12 images, fewer than 6 batches.
            reqs = [images(1 + i % 3, triggered=i % 2 == 1) for i in range(6)]
            return [reqs, await asyncio.gather(*(decisions(eng, x) for x in reqs))]
        finally:
            await eng.stop()

    reqs, results = asyncio.run(main())
    for i, (x, d) in enumerate(zip(reqs, results, strict=True)):
        assert len(d) == x.shape[0]
        assert d.flagged.tolist() == [i % 2 == 1] * x.shape[0]
        want = [1 + j % 9 for j in range(x.shape[0])]
        assert d.detriggered.tolist() == want
    count, total = batch_sizes(metrics)
    assert total == 12
    assert count < 6  # requests were batched together
    assert count == 2  # 7 then 5: a request chunk is never split across batches


def test_large_request_is_split_into_max_batch_chunks(model_set: ModelSet) -> None:
    metrics = Metrics()

    async def main():
        eng = engine(model_set, metrics, max_wait_s=0.0)
        eng.start()
        try:
            return await decisions(eng, images(20, triggered=True))
        finally:
            await eng.stop()

    d = asyncio.run(main())
    assert len(d) == 20 and d.flagged.all()
    assert d.detriggered.tolist() == [1 + j % 9 for j in range(20)]
    count, total = batch_sizes(metrics)
    assert total == 20 and count == 3  # 8 + 8 + 4


def test_full_queue_raises_queue_full_without_queueing(model_set: ModelSet) -> None:
    metrics = Metrics()

    async def main():
        eng = engine(model_set, metrics, max_queue_images=10, max_wait_s=0.5, max_batch_size=8)
        eng.start()
        try:
            first = asyncio.ensure_future(decisions(eng, images(6)))
            await asyncio.sleep(0.05)  # the 6 images wait for more (batch of 8, 0.5 s wait)
            assert eng.depth == 6
            with pytest.raises(QueueFull) as err:
                await decisions(eng, images(5))
            assert eng.depth == 6  # nothing of the refused request was queued
            assert "6 of 10" in err.value.message
            small = await decisions(eng, images(2))  # still fits: 6 + 2 = 8 = a full batch
            return await first, small, err.value
        finally:
            await eng.stop()

    first, small, _ = asyncio.run(main())
    assert len(first) == 6 and len(small) == 2
    assert metrics.registry.get_sample_value("guard_queue_depth", {"model": "tiny"}) == 0


def test_detectors_share_the_queue_but_never_a_batch(strip_set: Path) -> None:
    ms = ModelSet.load(strip_set, Settings(models=[strip_set]))
    metrics = Metrics()
    metrics.init_model("tinystrip", 10, ["detrigger", "strip"])

    async def main() -> list:
        eng = engine(ms, metrics)
        eng.start()
        try:
            # 8 requests of 1..3 images, alternating detrigger / strip, arriving together.
            reqs = [(images(1 + i % 3, triggered=i % 4 < 2), list(Detector)[i % 2])
                    for i in range(8)]  # fmt: skip
            return [reqs, await asyncio.gather(*(decisions(eng, x, d) for x, d in reqs))]
        finally:
            await eng.stop()

    reqs, results = asyncio.run(main())
    for i, ((x, detector), d) in enumerate(zip(reqs, results, strict=True)):
        assert len(d) == x.shape[0]
        assert d.flagged.tolist() == [i % 4 < 2] * x.shape[0], i
        assert (d.detriggered is None) is (detector is Detector.strip)  # its own detector
    for detector in (Detector.detrigger, Detector.strip):  # the set offers no both
        labels = {"model": "tinystrip", "detector": detector.value}
        count = metrics.registry.get_sample_value("guard_batch_size_count", labels)
        total = metrics.registry.get_sample_value("guard_batch_size_sum", labels)
        want = sum(x.shape[0] for x, d in reqs if d is detector)
        assert total == want and count is not None and count < 4  # batched, never mixed
