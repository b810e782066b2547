"""The in-process ceiling: ONNX Runtime in the benchmark's own process, no HTTP, no decoding,
no batching wait. The guard's path is what its engine runs per batch (AE(x), then the target on
x and the images AE(x) changed in one call, ModelSet.infer_scored), with the same session
options as the service, on the set's clean sample images that the load sends too."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from bench.bodies import as_tensor, sample_pngs
from service.runtime.modelset import ModelSet


def measure(
    run: Callable[[np.ndarray], object], x: np.ndarray, seconds: float
) -> tuple[float, float]:
    """Back-to-back calls of ``run(x)`` for ``seconds`` after one warm call: images/s, and CPU
    milliseconds per image of this process (all its threads; nothing else runs in it then)."""
    run(x)
    calls = 0
    cpu = time.process_time()
    started = time.perf_counter()
    while True:
        run(x)
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            images = calls * x.shape[0]
            return images / elapsed, 1000 * (time.process_time() - cpu) / images


def images_per_s(run: Callable[[np.ndarray], object], x: np.ndarray, seconds: float) -> float:
    return measure(run, x, seconds)[0]


def batch(model_set: ModelSet, size: int, seed: int) -> np.ndarray:
    """``size`` of the set's clean sample images, the very images the load sends: the guard's
    cost depends on them (it runs the target once on an image its AE returns unchanged)."""
    return as_tensor(sample_pngs(model_set.folder, size, seed), model_set.input_chw)


def guard_path(model_set: ModelSet, size: int, seconds: float, seed: int) -> tuple[float, float]:
    """Images/s and CPU ms per image of the guard's engine call at batch ``size``."""
    return measure(model_set.infer_scored, batch(model_set, size, seed), seconds)


def models_alone(model_set: ModelSet, size: int, seconds: float, seed: int) -> dict[str, float]:
    """Images/s of the AE alone, the target alone, and the guard's path, at batch ``size``."""
    x = batch(model_set, size, seed)
    return {
        "detrigger": round(images_per_s(model_set.detrigger.run, x, seconds), 1),
        "target": round(images_per_s(model_set.target.run, x, seconds), 1),
        "guard_path": round(images_per_s(model_set.infer_scored, x, seconds), 1),
    }


def pair(before: tuple[float, float], after: tuple[float, float]) -> dict[str, float]:
    """A cell's ceiling: the mean of the passes before and after it (images/s, CPU ms/image)."""
    return {
        "images_per_s": (before[0] + after[0]) / 2,
        "cpu_ms_per_image": (before[1] + after[1]) / 2,
        "images_per_s_before": round(before[0], 1),
        "images_per_s_after": round(after[0], 1),
    }
