"""STRIP (Gao et al., ACSAC 2019), the guard's second detector: pure numpy, no torch.

Each input x is superimposed on n clean images b_1..b_n drawn from a bank of held-out
validation images, ``x_j = clip(input_weight * x + bank_weight * b_j, 0, 1)`` (the paper adds
the two images, weights 1 and 1), the target runs on every copy, and the score is the mean
Shannon entropy, in bits, of the n softmax outputs. A trigger keeps pulling every copy to its
target class whatever the other image shows, so a triggered input has a LOW entropy; a clean
one is pulled between its class and the bank image's. Flagged when entropy < threshold, the
threshold being the target-FPR quantile of clean validation entropies
(training.evaluation.strip).

One implementation for both halves: the service (service.runtime.modelset, service.backends)
and the offline calibration (training.evaluation.strip) call :func:`strip_batch` and
:func:`strip_scores`, so a calibrated threshold means what the service computes.

Everything is vectorised over the batch: B inputs become one array of B * (n + 1) images
``[x; superimposed]`` and ONE target call. The bank draws of an input are fixed by its pixels
and the seed, so the same image gets the same score in any request, batch or position.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.errors import ModelLoadError
from contract.manifest import StripSpec, read_verified
from contract.scoring import Decisions, log_softmax

# splitmix64 constants (Steele et al.): a cheap, well-mixed 64-bit hash of 64-bit integers.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@dataclass(frozen=True)
class StripConfig:
    """How inputs are perturbed: what the manifest's ``detectors.strip`` entry records."""

    n: int  # superimposed copies per input
    seed: int = 0  # salts the per-input bank draws
    input_weight: float = 1.0
    bank_weight: float = 1.0


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """Elementwise splitmix64 finaliser of a uint64 array (wrapping arithmetic)."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def image_keys(x: np.ndarray, seed: int) -> np.ndarray:
    """(B, C, H, W) -> (B,) uint64: a 64-bit hash of each image's float32 pixels, keyed by seed."""
    key = int(seed).to_bytes(8, "little", signed=False)
    rows = np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), -1)
    digests = [hashlib.blake2b(row.tobytes(), digest_size=8, key=key).digest() for row in rows]
    return np.frombuffer(b"".join(digests), dtype="<u8").astype(np.uint64)


def draw_indices(x: np.ndarray, bank_size: int, n: int, seed: int) -> np.ndarray:
    """(B, n) distinct bank indices per input, fixed by the input's pixels and the seed.

    Each input ranks the whole bank by a hash of (its key, bank index) and takes the first n:
    a sample without replacement, computed for the batch at once.
    """
    if not 1 <= n <= bank_size:
        raise ValueError(f"n = {n} superimpositions need 1 <= n <= bank size ({bank_size})")
    keys = image_keys(x, seed)  # (B,)
    per_bank = _splitmix64(np.arange(bank_size, dtype=np.uint64))  # (M,)
    ranks = _splitmix64(keys[:, None] ^ per_bank[None, :])  # (B, M)
    return np.argsort(ranks, axis=1, kind="stable")[:, :n]


def superimpose(
    x: np.ndarray, bank: np.ndarray, indices: np.ndarray, config: StripConfig
) -> np.ndarray:
    """x (B, C, H, W), bank (M, C, H, W), indices (B, n) -> (B * n, C, H, W) float32 in [0, 1];
    rows i * n .. i * n + n - 1 are input i's copies."""
    a = np.float32(config.input_weight)
    b = np.float32(config.bank_weight)
    copies = a * x[:, None].astype(np.float32, copy=False) + b * bank[indices]  # (B, n, C, H, W)
    np.clip(copies, 0.0, 1.0, out=copies)
    return copies.reshape(-1, *x.shape[1:])


def strip_batch(x: np.ndarray, bank: np.ndarray, config: StripConfig) -> np.ndarray:
    """What the target runs on: [x; superimposed copies], (B * (n + 1), C, H, W) float32."""
    indices = draw_indices(x, len(bank), config.n, config.seed)
    return np.concatenate([x.astype(np.float32, copy=False), superimpose(x, bank, indices, config)])


def entropy_bits(logits: np.ndarray) -> np.ndarray:
    """(R, K) logits -> (R,) Shannon entropy of the softmax, in bits; stable for any logits
    (the log-probabilities are finite, so p * log p is 0, never NaN, where p underflows)."""
    log_p = log_softmax(logits)  # float64
    return np.maximum(-(np.exp(log_p) * log_p).sum(axis=1) / np.log(2.0), 0.0)


def mean_entropy(logits: np.ndarray, n: int) -> np.ndarray:
    """(B * n, K) logits of the superimposed copies (input-major) -> (B,) mean entropy in bits."""
    return entropy_bits(logits).reshape(-1, n).mean(axis=1)


def strip_scores(logits: np.ndarray, b: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The target's logits on :func:`strip_batch` of B inputs -> (logits on x (B, K), mean
    entropy (B,) in bits)."""
    if logits.ndim != 2 or logits.shape[0] != b * (n + 1):
        raise ValueError(f"logits of shape {logits.shape}; expected ({b * (n + 1)}, classes)")
    return logits[:b], mean_entropy(logits[b:], n)


def run_strip(
    x: np.ndarray,
    bank: np.ndarray,
    config: StripConfig,
    target: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """x (B, C, H, W) in [0, 1] -> (logits on x (B, K), mean entropy (B,)), with ONE call of
    ``target`` (images -> logits) on B * (n + 1) images."""
    logits = np.asarray(target(strip_batch(x, bank, config)))
    return strip_scores(logits, len(x), config.n)


def flag(entropy: np.ndarray, threshold: float) -> np.ndarray:
    """STRIP's rule: flagged when the mean entropy is below the threshold."""
    return np.asarray(entropy) < threshold


def decide_strip(logits_x: np.ndarray, entropy: np.ndarray, threshold: float) -> Decisions:
    """The decisions of a batch: the class on x, the entropy as score, the flag. STRIP runs no
    AE, so there is no class after de-triggering."""
    return Decisions(logits_x.argmax(axis=1), None, entropy, flag(entropy, threshold))


def bank_from_npy(data: bytes, chw: tuple[int, int, int]) -> np.ndarray:
    """A bank file's bytes (``.npy`` of (M, C, H, W), uint8 in 0..255 or float in [0, 1]) ->
    (M, C, H, W) float32 in [0, 1]. Raises ValueError saying what is wrong."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"not a .npy array: {exc}") from exc
    if array.ndim != 4 or tuple(array.shape[1:]) != chw or array.shape[0] < 1:
        raise ValueError(f"bank of shape {array.shape}; expected (M, {', '.join(map(str, chw))})")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255.0)
    if array.dtype.kind != "f":
        raise ValueError(f"bank of dtype {array.dtype}; expected uint8 or float")
    bank = array.astype(np.float32)
    if not np.isfinite(bank).all() or bank.min() < 0.0 or bank.max() > 1.0:
        raise ValueError("a float bank must hold finite values in [0, 1]")
    return bank


@dataclass(frozen=True)
class Strip:
    """The set's STRIP detector: its bank (M, C, H, W) float32 in [0, 1] and its settings."""

    config: StripConfig
    bank: np.ndarray
    threshold: float

    @classmethod
    def load(cls, folder: Path, spec: StripSpec, chw: tuple[int, int, int]) -> Strip:
        data = read_verified(folder, spec.bank)
        try:
            bank = bank_from_npy(data, chw)
        except ValueError as exc:
            raise ModelLoadError(f"{folder / spec.bank.file}: {exc}") from exc
        if spec.n > len(bank):
            raise ModelLoadError(
                f"{folder / spec.bank.file}: {len(bank)} bank images, fewer than the manifest's "
                f"n = {spec.n} superimpositions per input"
            )
        config = StripConfig(
            n=spec.n,
            seed=spec.seed,
            input_weight=spec.blend.input_weight,
            bank_weight=spec.blend.bank_weight,
        )
        return cls(config, bank, spec.threshold)

    def batch(self, x: np.ndarray) -> np.ndarray:
        """(B, C, H, W) -> [x; superimposed copies], (B * (n + 1), C, H, W): one target call."""
        return strip_batch(x, self.bank, self.config)

    def copies(self, x: np.ndarray) -> np.ndarray:
        """(B, C, H, W) -> the superimposed copies alone, (B * n, C, H, W), input-major."""
        indices = draw_indices(x, len(self.bank), self.config.n, self.config.seed)
        return superimpose(x, self.bank, indices, self.config)

    def decide(self, logits: np.ndarray, b: int) -> tuple[Decisions, np.ndarray]:
        """The target's logits on :meth:`batch` of B inputs -> (decisions, logits on x)."""
        logits_x, entropy = strip_scores(logits, b, self.config.n)
        return decide_strip(logits_x, entropy, self.threshold), logits_x
