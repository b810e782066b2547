"""Run the per-input detectors the way the guard deploys them: ONNX Runtime sessions, the
service's own scoring (contract.scoring for the de-trigger AE, contract.strip for STRIP), one
batch at a time, with the inference timed by time.perf_counter.

- De-trigger AE: ``AE(x)``, then the target once on ``[x; AE(x)]`` (as the service's engine
  does): per input 1 AE pass and 2 target passes. Scores: the class change (the paper's rule)
  and ``kl`` (KL(p(. | x) || p(. | AE(x))), in nats, thresholded on clean validation images).
- STRIP: the target once on ``[x; n superimposed copies]``: n + 1 target passes per input.
  Score: the mean entropy in bits, flagged when BELOW its threshold.

Images come in as uint8 (N, C, H, W), are turned into float32 in [0, 1] exactly as the
service's decoder and STRIP's calibration do, and may be transformed (a trigger stamped)
before the timer starts, so the time is the detector's alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from contract.scoring import kl
from contract.strip import StripConfig, run_strip
from contract.unchanged import largest_change

Transform = Callable[[np.ndarray], np.ndarray]


def cpu_session(data: bytes, threads: int) -> ort.InferenceSession:
    """An ONNX Runtime session on the CPU provider from a graph's bytes (the ones whose sha256 was
    checked); threads 0 = ONNX Runtime's default."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class Graph:
    """One ONNX graph with one input and one output, on ONNX Runtime's CPU provider."""

    session: ort.InferenceSession
    input_name: str
    output_name: str

    @classmethod
    def load(cls, data: bytes, threads: int) -> Graph:
        """A session from the graph's bytes; input and output names read from the graph."""
        session = cpu_session(data, threads)
        return cls(session, session.get_inputs()[0].name, session.get_outputs()[0].name)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([self.output_name], {self.input_name: x})
        return np.asarray(out)


@dataclass(frozen=True)
class AEScores:
    """The de-trigger AE detector on N inputs."""

    predicted: np.ndarray  # (N,) argmax f(x)
    detriggered: np.ndarray  # (N,) argmax f(AE(x))
    kl: np.ndarray  # (N,) nats
    seconds: float  # inference and scoring only
    # (N,) max |AE(x) - x| over each image: 0 for an image a gated AE returns unchanged
    moved: np.ndarray

    @property
    def class_change(self) -> np.ndarray:
        return self.predicted != self.detriggered


@dataclass(frozen=True)
class StripScores:
    """STRIP on N inputs."""

    predicted: np.ndarray  # (N,) argmax f(x)
    entropy: np.ndarray  # (N,) mean entropy of the n copies, bits
    seconds: float


# Forward passes per input image, by graph: what one decision costs.
def ae_passes() -> dict[str, int]:
    return {"ae": 1, "target": 2, "total": 3}


def strip_passes(n: int) -> dict[str, int]:
    return {"ae": 0, "target": n + 1, "total": n + 1}


def float_batches(
    images: np.ndarray, batch_size: int, transform: Transform | None = None
) -> Iterator[np.ndarray]:
    """uint8 (N, C, H, W) -> float32 (B, C, H, W) batches in [0, 1], each transformed."""
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].astype(np.float32) / np.float32(255.0)
        if transform is not None:
            x = np.asarray(transform(x), dtype=np.float32)
        yield x


def run_ae(
    images: np.ndarray,
    ae: Graph,
    target: Graph,
    batch_size: int,
    transform: Transform | None = None,
) -> AEScores:
    """The de-trigger AE detector on uint8 images (N, C, H, W)."""
    predicted, detriggered, scores, moved, seconds = [], [], [], [], 0.0
    for x in float_batches(images, batch_size, transform):
        t0 = time.perf_counter()
        x_ae = ae(x).astype(np.float32, copy=False)
        logits = target(np.concatenate([x, x_ae]))
        logits_x, logits_ae = logits[: len(x)], logits[len(x) :]
        score = kl(logits_x, logits_ae)
        seconds += time.perf_counter() - t0
        predicted.append(logits_x.argmax(axis=1))
        detriggered.append(logits_ae.argmax(axis=1))
        scores.append(score)
        moved.append(largest_change(x, x_ae))
    return AEScores(
        _cat(predicted, np.int64),
        _cat(detriggered, np.int64),
        _cat(scores, float),
        seconds,
        _cat(moved, float),
    )


def run_strip_detector(
    images: np.ndarray,
    bank: np.ndarray,
    config: StripConfig,
    target: Graph,
    batch_size: int,
    transform: Transform | None = None,
) -> StripScores:
    """STRIP on uint8 images (N, C, H, W); ``bank`` is float32 (M, C, H, W) in [0, 1]."""
    predicted, entropy, seconds = [], [], 0.0
    for x in float_batches(images, batch_size, transform):
        t0 = time.perf_counter()
        logits_x, h = run_strip(x, bank, config, target)
        seconds += time.perf_counter() - t0
        predicted.append(logits_x.argmax(axis=1))
        entropy.append(h)
    return StripScores(_cat(predicted, np.int64), _cat(entropy, float), seconds)


def warm_up(graph: Graph, x: np.ndarray) -> None:
    """One untimed call, so that session start-up costs no detector time."""
    graph(x.astype(np.float32, copy=False))


def _cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
