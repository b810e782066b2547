"""STRIP's numpy core (contract/strip.py) and its place in a model set, without HTTP."""

import asyncio
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from contract.errors import InvalidParameter, ModelLoadError
from contract.modes import Detector, Mode
from contract.strip import (
    StripConfig,
    bank_from_npy,
    draw_indices,
    entropy_bits,
    flag,
    mean_entropy,
    run_strip,
    strip_batch,
    superimpose,
)
from service.guard import Guard, ImageInput, Outcome
from service.metrics import Metrics
from service.repository import ModelRepository
from service.runtime.modelset import ModelSet
from service.settings import Settings
from tests.support.guard import running_guard
from tests.support.tiny_models import TinySpec, add_trigger, clean_image, png_bytes

RNG = np.random.default_rng(7)
CHW = (1, 6, 5)
BANK = RNG.random((12, *CHW), dtype=np.float32)
W = RNG.normal(size=(int(np.prod(CHW)), 4)) * 3.0  # a linear "target" with 4 classes


def linear_target(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).astype(np.float64) @ W


def images(b: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((b, *CHW), dtype=np.float32)


# --- entropy ---------------------------------------------------------------------------------
def test_entropy_has_the_known_values_in_bits() -> None:
    logits = np.array(
        [
            [0.0, 0.0, 0.0, 0.0],  # 4 equal: 2 bits
            [5.0, 5.0, -1e4, -1e4],  # 2 equal, 2 negligible: 1 bit
            [1e4, 0.0, -1e4, 3.0],  # one-hot: 0 bits
            np.log([0.5, 0.25, 0.125, 0.125]),  # 1/2*1 + 1/4*2 + 2 * 1/8*3 = 1.75 bits
        ]
    )
    h = entropy_bits(logits)
    assert np.all(np.isfinite(h))
    np.testing.assert_allclose(h, [2.0, 1.0, 0.0, 1.75], atol=1e-12)


def test_entropy_is_safe_for_huge_logits_and_never_negative() -> None:
    logits = np.array([[3e38, -3e38, 0.0], [1e30, 1e30, 1e30]], dtype=np.float32)
    h = entropy_bits(logits)
    assert np.all(np.isfinite(h)) and np.all(h >= 0.0)
    np.testing.assert_allclose(h, [0.0, np.log2(3)], atol=1e-9)


def test_mean_entropy_averages_each_inputs_copies() -> None:
    # Input 0: copies of 1 and 0 bits; input 1: copies of 2 and 1 bits.
    logits = np.array(
        [[0.0, 0.0, -1e4, -1e4], [1e4, 0.0, 0.0, 0.0], [0.0] * 4, [0.0, 0.0, -1e4, -1e4]]
    )
    np.testing.assert_allclose(mean_entropy(logits, n=2), [0.5, 1.5], atol=1e-12)


def test_flag_is_entropy_below_the_threshold() -> None:
    assert flag(np.array([0.1, 0.5, 0.9]), 0.5).tolist() == [True, False, False]


# --- draws and superimposition ----------------------------------------------------------------
def test_draws_are_distinct_in_range_and_fixed_by_the_image_and_seed() -> None:
    x = images(8)
    idx = draw_indices(x, len(BANK), 5, seed=0)
    assert idx.shape == (8, 5) and idx.min() >= 0 and idx.max() < len(BANK)
    assert all(len(set(row)) == 5 for row in idx.tolist())
    # The same image draws the same bank images wherever it stands and whatever surrounds it.
    shuffled = draw_indices(np.concatenate([images(3, seed=9), x[::-1]]), len(BANK), 5, seed=0)
    np.testing.assert_array_equal(shuffled[3:], idx[::-1])
    np.testing.assert_array_equal(draw_indices(x[2:3], len(BANK), 5, seed=0), idx[2:3])
    # Another seed, or another image, draws differently.
    assert not np.array_equal(draw_indices(x, len(BANK), 5, seed=1), idx)
    assert len({tuple(row) for row in idx.tolist()}) > 1
    with pytest.raises(ValueError):
        draw_indices(x, len(BANK), len(BANK) + 1, seed=0)


def test_superimpose_adds_and_clips_input_major() -> None:
    x = np.full((2, *CHW), 0.7, dtype=np.float32)
    bank = np.stack([np.full(CHW, v, dtype=np.float32) for v in (0.0, 0.2, 0.5)])
    idx = np.array([[0, 2], [1, 0]])
    added = superimpose(x, bank, idx, StripConfig(n=2))
    assert added.shape == (4, *CHW) and added.dtype == np.float32
    np.testing.assert_allclose(added[:, 0, 0, 0], [0.7, 1.0, 0.9, 0.7], atol=1e-6)
    halves = superimpose(x, bank, idx, StripConfig(n=2, input_weight=0.5, bank_weight=0.5))
    np.testing.assert_allclose(halves[:, 0, 0, 0], [0.35, 0.6, 0.45, 0.35], atol=1e-6)


def test_strip_batch_is_the_inputs_then_their_copies() -> None:
    x = images(3)
    batch = strip_batch(x, BANK, StripConfig(n=4))
    assert batch.shape == (3 * 5, *CHW) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[:3], x)


# --- one vectorised call == the definition, one input at a time -------------------------------
def loop_reference(x: np.ndarray, config: StripConfig) -> np.ndarray:
    """STRIP written out per input and per copy, with its own softmax and entropy."""
    idx = draw_indices(x, len(BANK), config.n, config.seed)
    out = []
    for i in range(len(x)):
        total = 0.0
        for j in idx[i]:
            copy = np.clip(config.input_weight * x[i] + config.bank_weight * BANK[j], 0.0, 1.0)
            z = linear_target(copy[None])[0]
            p = np.exp(z - z.max())
            p /= p.sum()
            total += -sum(pk * np.log2(pk) for pk in p if pk > 0)
        out.append(total / config.n)
    return np.array(out)


@pytest.mark.parametrize(
    "config", [StripConfig(n=6), StripConfig(n=3, seed=5, input_weight=0.5, bank_weight=0.5)]
)
def test_vectorised_strip_equals_the_per_input_loop_with_one_target_call(
    config: StripConfig,
) -> None:
    x = images(10, seed=3)
    calls: list[int] = []

    def target(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return linear_target(batch)

    logits_x, entropy = run_strip(x, BANK, config, target)
    assert calls == [10 * (config.n + 1)]  # ONE call for the whole batch
    np.testing.assert_allclose(logits_x, linear_target(x), rtol=1e-12)
    np.testing.assert_allclose(entropy, loop_reference(x, config), rtol=1e-9, atol=1e-12)


def test_a_repeated_image_gets_the_same_score_in_any_batch() -> None:
    x = images(6, seed=4)
    config = StripConfig(n=5, seed=2)
    _, alone = run_strip(x[4:5], BANK, config, linear_target)
    _, batch = run_strip(np.concatenate([x, x[::-1]]), BANK, config, linear_target)
    assert batch[4] == pytest.approx(alone[0], abs=1e-12)
    assert batch[7] == pytest.approx(alone[0], abs=1e-12)  # x[4] again, at another position


# --- the bank file ----------------------------------------------------------------------------
def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_bank_from_npy_scales_uint8_and_refuses_what_does_not_fit() -> None:
    raw = np.array([0, 51, 255], dtype=np.uint8).reshape(3, 1, 1, 1)
    np.testing.assert_allclose(bank_from_npy(npy(raw), (1, 1, 1)).ravel(), [0.0, 0.2, 1.0])
    floats = np.full((2, 1, 1, 1), 0.5)
    assert bank_from_npy(npy(floats), (1, 1, 1)).dtype == np.float32
    for bad, chw in [
        (raw, (3, 1, 1)),  # wrong shape
        (np.full((2, 1, 1, 1), 1.5), (1, 1, 1)),  # float outside [0, 1]
        (np.ones((2, 1, 1, 1), dtype=np.int64), (1, 1, 1)),  # not uint8 or float
    ]:
        with pytest.raises(ValueError):
            bank_from_npy(npy(bad), chw)
    with pytest.raises(ValueError):
        bank_from_npy(b"not numpy", (1, 1, 1))


# --- a model set with STRIP -------------------------------------------------------------------
def test_a_set_with_a_bank_offers_strip_and_flags_triggered_images(strip_set: Path) -> None:
    ms = ModelSet.load(strip_set, Settings(models=[strip_set]))
    assert ms.detectors == (Detector.detrigger, Detector.strip)
    rule = ms.rule(Detector.strip)
    assert (rule.score_name, rule.rule, rule.threshold) == ("strip_entropy", "score_below", 0.3)
    spec = TinySpec()
    clean = np.stack([clean_image(spec, k, seed=k) for k in range(1, 10)])
    x = np.concatenate([clean, np.stack([add_trigger(im) for im in clean])])
    x = x[:, None].astype(np.float32) / np.float32(255.0)
    scored = ms.strip_scored(x)
    d = scored.decisions
    assert d.detriggered is None and scored.logits_ae is None
    assert d.predicted.tolist() == list(range(1, 10)) + [0] * 9
    assert d.flagged.tolist() == [False] * 9 + [True] * 9
    assert (d.score[:9] > 0.6).all() and (d.score[9:] < 0.01).all()
    # Slicing and joining (what the engine does) keeps the missing AE class missing.
    assert type(scored).concat([scored.slice(0, 4), scored.slice(4, 18)]).logits_ae is None


def test_a_set_without_a_bank_offers_only_detrigger(tiny_set: Path) -> None:
    ms = ModelSet.load(tiny_set, Settings(models=[tiny_set]))
    assert ms.detectors == (Detector.detrigger,) and ms.strip is None


def edit_strip(src: Path, dst: Path, **changes: object) -> Path:
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["detectors"]["strip"].update(changes)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_a_tampered_bank_fails_the_set_naming_the_file(strip_set: Path, tmp_path: Path) -> None:
    folder = tmp_path / "set"
    shutil.copytree(strip_set, folder)
    bank = np.load(folder / "strip_bank.npy")
    np.save(folder / "strip_bank.npy", bank[::-1])
    with pytest.raises(ModelLoadError) as err:
        ModelSet.load(folder, Settings(models=[folder]))
    assert "strip_bank.npy" in err.value.message and "sha256 mismatch" in err.value.message


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"n": 100}, "fewer than the manifest's n = 100"),
        ({"n": 0}, "manifest.json"),
        ({"threshold": -1.0}, "manifest.json"),
        ({"blend": {"input_weight": 0.0}}, "manifest.json"),
    ],
)
def test_bad_strip_entries_are_refused(
    strip_set: Path, tmp_path: Path, changes: dict, words: str
) -> None:
    folder = edit_strip(strip_set, tmp_path / "set", **changes)
    with pytest.raises(ModelLoadError) as err:
        ModelSet.load(folder, Settings(models=[folder]))
    assert words in err.value.message


# --- the guard: which detector a request gets --------------------------------------------------
def test_the_default_detector_applies_where_the_set_offers_it(
    strip_set: Path, tiny_set: Path
) -> None:
    spec = TinySpec()
    images = [
        ImageInput(png_bytes(clean_image(spec, 3))),
        ImageInput(png_bytes(add_trigger(clean_image(spec, 3)))),
    ]
    settings = Settings(models=[strip_set, tiny_set], default_detector=Detector.strip)

    async def main() -> tuple[Outcome, Outcome, Outcome]:
        async with running_guard(settings) as guard:
            return (
                await guard.classify(images),  # tinystrip offers STRIP: the default
                await guard.classify(images, model="tiny"),  # tiny does not: detrigger
                await guard.classify(images, detector=Detector.detrigger),
            )

    strip, tiny, named = asyncio.run(main())
    assert strip.rule.detector is Detector.strip and strip.rule.score_name == "strip_entropy"
    assert [r.flagged for r in strip.results] == [False, True]
    assert [r.detriggered for r in strip.results] == [None, None]
    assert tiny.rule.detector is Detector.detrigger and tiny.model_set.name == "tiny"
    assert named.rule.detector is Detector.detrigger
    assert [r.detriggered for r in named.results] == [3, 3]


def test_an_unnamed_detector_under_repair_falls_back_to_detrigger(strip_set: Path) -> None:
    settings = Settings(models=[strip_set], default_detector=Detector.strip)
    metrics = Metrics()
    guard = Guard(settings, metrics, ModelRepository(settings, metrics))
    ms = ModelSet.load(strip_set, settings)
    assert guard.detector_for(ms, None, Mode.flag) is Detector.strip
    assert guard.detector_for(ms, None, Mode.repair) is Detector.detrigger
    with pytest.raises(InvalidParameter):
        guard.detector_for(ms, Detector.strip, Mode.repair)
    guard.stop()
