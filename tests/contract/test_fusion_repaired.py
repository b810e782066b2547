"""Detector detrigger_or_repaired's decision (contract.fusion): which rule fires, the class
mode repair answers, and a non-finite score, on hand-made logits."""

from __future__ import annotations

import numpy as np
import pytest

from contract.fusion import decide_detrigger_or_repaired
from contract.manifest import Detectors, DetriggerOrRepairedSpec, RepairedSpec

REPAIRED = RepairedSpec(
    file="repaired.onnx", sha256="0" * 64, input_name="images", output_name="logits",
    threshold=0.5,
)  # fmt: skip
SPEC = DetriggerOrRepairedSpec(ae_threshold=0.5, repaired_threshold=0.5)


def onehot(classes: list[int], k: int = 4, high: float = 20.0) -> np.ndarray:
    out = np.zeros((len(classes), k), np.float32)
    out[np.arange(len(classes)), classes] = high
    return out


def test_each_rule_fires_on_its_own_and_the_answer_follows_the_one_that_fired() -> None:
    # image 0: clean (all agree); 1: only the AE moves it (to class 2); 2: only the repaired
    # graph disagrees (class 3); 3: both disagree, with different classes (2 vs 3).
    x = onehot([1, 0, 0, 0])
    ae = onehot([1, 2, 0, 2])
    repaired = onehot([1, 0, 3, 3])
    d, answer = decide_detrigger_or_repaired(x, ae, repaired, SPEC, REPAIRED)
    assert d.flagged.tolist() == [False, True, True, True]
    assert d.fired.tolist() == [[False, False], [True, False], [False, True], [True, True]]
    assert d.predicted.tolist() == [1, 0, 0, 0]
    # The repaired graph's class where its rule fired, else the class on AE(x).
    assert d.detriggered.tolist() == [1, 2, 3, 3]
    np.testing.assert_array_equal(answer, np.stack([ae[0], ae[1], repaired[2], repaired[3]]))
    np.testing.assert_allclose(d.score, [0, 1, 0, 1], atol=1e-6)
    np.testing.assert_allclose(d.repaired_score, [0, 0, 1, 1], atol=1e-6)
    assert d.entropy is None and d.finite().all()


def test_each_threshold_is_its_own() -> None:
    x, ae, repaired = onehot([0, 0]), onehot([2, 0]), onehot([0, 3])
    only_ae = SPEC.model_copy(update={"repaired_threshold": 1.5})
    d, _ = decide_detrigger_or_repaired(x, ae, repaired, only_ae, REPAIRED)
    assert d.fired.tolist() == [[True, False], [False, False]]
    only_repaired = SPEC.model_copy(update={"ae_threshold": 1.5})
    d, _ = decide_detrigger_or_repaired(x, ae, repaired, only_repaired, REPAIRED)
    assert d.fired.tolist() == [[False, False], [False, True]]


def test_a_non_finite_repaired_score_is_not_finite() -> None:
    x, ae = onehot([0, 1]), onehot([0, 1])
    repaired = onehot([0, 1])
    repaired[1, 0] = np.nan
    d, _ = decide_detrigger_or_repaired(x, ae, repaired, SPEC, REPAIRED)
    assert d.finite().tolist() == [True, False]
    assert not d.flagged[1]  # fires no rule; the guard refuses the image instead


def test_the_manifest_entry_needs_the_repaired_graph() -> None:
    entry = {"ae_threshold": 0.5, "repaired_threshold": 0.4}
    with pytest.raises(ValueError, match="it needs detectors.repaired"):
        Detectors.model_validate({"detrigger_or_repaired": entry})
    with pytest.raises(ValueError, match="finite"):
        Detectors.model_validate(
            {"repaired": REPAIRED.model_dump(),
             "detrigger_or_repaired": {**entry, "repaired_threshold": float("inf")}}
        )  # fmt: skip
    both = {"repaired": REPAIRED.model_dump(), "detrigger_or_repaired": entry}
    ok = Detectors.model_validate(both)
    assert ok.detrigger_or_repaired is not None and ok.detrigger_or_repaired.rule == "either"
