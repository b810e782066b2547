"""Detector both's rule (contract.fusion) on hand-made logits and entropies: the OR of the two
rules, which rule fired, the one-call batch layout, fail-closed finiteness, the manifest entry."""

from __future__ import annotations

import numpy as np
import pytest

from contract.fusion import both_batch, both_scores, decide_both
from contract.manifest import BothSpec, Detectors, StripSpec
from contract.scoring import Decisions, prob_drop
from contract.strip import Strip, StripConfig

SPEC = BothSpec(score="prob_drop", ae_threshold=0.5, strip_threshold=0.3)


def logits(classes: list[int], sure: float = 10.0, k: int = 3) -> np.ndarray:
    out = np.zeros((len(classes), k))
    out[np.arange(len(classes)), classes] = sure
    return out


def test_either_rule_fires_on_each_part_alone_and_together() -> None:
    # image 0: nothing; 1: AE changes the class (prob_drop ~ 1); 2: low entropy only; 3: both.
    lx = logits([1, 0, 0, 0])
    lae = logits([1, 2, 0, 2])
    entropy = np.array([1.2, 1.0, 0.1, 0.05])
    d = decide_both(lx, lae, entropy, SPEC)
    assert d.flagged.tolist() == [False, True, True, True]
    assert d.fired.tolist() == [[False, False], [True, False], [False, True], [True, True]]
    np.testing.assert_allclose(d.score, prob_drop(lx, lae))
    np.testing.assert_array_equal(d.entropy, entropy)
    assert d.detriggered.tolist() == [1, 2, 0, 2] and d.predicted.tolist() == [1, 0, 0, 0]


def test_thresholds_are_strict_on_both_sides() -> None:
    lx, lae = logits([0, 0], sure=0.0), logits([0, 0], sure=0.0)  # prob_drop exactly 0
    at = BothSpec(score="prob_drop", ae_threshold=0.0, strip_threshold=0.3)
    d = decide_both(lx, lae, np.array([0.3, 0.2999]), at)
    assert d.fired.tolist() == [[False, False], [False, True]]


def test_a_non_finite_score_or_entropy_is_not_finite_and_fires_nothing() -> None:
    lx = logits([0, 0, 0])
    lx[1, 0] = np.nan
    entropy = np.array([np.nan, 1.0, 1.0])
    d = decide_both(lx, logits([0, 0, 0]), entropy, SPEC)
    assert d.finite().tolist() == [False, False, True]
    assert not d.flagged.any()  # what the guard must refuse, never answer as clean


def test_slice_and_concat_keep_both_parts() -> None:
    d = decide_both(logits([1, 0, 0, 0]), logits([1, 2, 0, 2]), np.array([1, 1, 0.1, 0]), SPEC)
    joined = Decisions.concat([d.slice(0, 1), d.slice(1, 4)])
    for field in ("predicted", "detriggered", "score", "flagged", "entropy", "fired"):
        np.testing.assert_array_equal(getattr(joined, field), getattr(d, field))


def test_one_batch_holds_x_then_ae_then_the_copies_and_splits_back() -> None:
    rng = np.random.default_rng(0)
    bank = rng.random((5, 1, 4, 4), dtype=np.float32)
    strip = Strip(StripConfig(n=3, seed=1), bank, 0.3)
    x = rng.random((2, 1, 4, 4), dtype=np.float32)
    x_ae = rng.random((2, 1, 4, 4), dtype=np.float32)
    batch = both_batch(x, x_ae, strip)
    assert batch.shape == (2 * (3 + 2), 1, 4, 4) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[:2], x)
    np.testing.assert_array_equal(batch[2:4], x_ae)
    np.testing.assert_array_equal(batch[4:], strip.batch(x)[2:])  # STRIP's own copies
    out = rng.normal(size=(10, 4))
    lx, lae, entropy = both_scores(out, 2, 3)
    np.testing.assert_array_equal(lx, out[:2])
    np.testing.assert_array_equal(lae, out[2:4])
    assert entropy.shape == (2,)
    with pytest.raises(ValueError, match="expected"):
        both_scores(out[:9], 2, 3)
    with pytest.raises(ValueError, match="AE"):
        both_batch(x, x_ae[:1], strip)


STRIP_ENTRY = {"bank": {"file": "b.npy", "sha256": "0" * 64}, "n": 4, "threshold": 0.3}


def test_the_manifest_entry_needs_strip_and_is_optional() -> None:
    both = {"score": "kl", "ae_threshold": 0.1, "strip_threshold": 0.2}
    assert Detectors.model_validate({"strip": STRIP_ENTRY}).both is None  # older manifests
    parsed = Detectors.model_validate({"strip": STRIP_ENTRY, "both": both})
    assert parsed.both is not None and parsed.both.rule == "either"
    assert isinstance(parsed.strip, StripSpec)
    with pytest.raises(ValueError, match="needs detectors.strip"):
        Detectors.model_validate({"both": both})
    for bad in ({"strip_threshold": -1.0}, {"ae_threshold": float("nan")}, {"rule": "and"}):
        with pytest.raises(ValueError):
            BothSpec.model_validate({**both, **bad})
