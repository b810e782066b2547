import numpy as np
import pytest

from contract.manifest import Decision
from contract.scoring import Decisions, decide, kl, log_softmax, prob_drop


def test_log_softmax_is_stable_and_normalised() -> None:
    logits = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]])
    probs = np.exp(log_softmax(logits))
    assert np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(axis=1), [1.0, 1.0])
    assert probs[0, 0] == pytest.approx(1.0)


def test_prob_drop_uses_the_class_on_x() -> None:
    x = np.log(np.array([[0.7, 0.2, 0.1]]))
    ae = np.log(np.array([[0.1, 0.8, 0.1]]))
    assert prob_drop(x, ae)[0] == pytest.approx(0.6)
    assert prob_drop(ae, x)[0] == pytest.approx(0.8 - 0.2)
    assert prob_drop(x, x)[0] == pytest.approx(0.0)


def test_kl_matches_the_definition() -> None:
    p = np.array([0.5, 0.25, 0.25])
    q = np.array([0.25, 0.5, 0.25])
    want = float(np.sum(p * np.log(p / q)))
    assert kl(np.log(p)[None], np.log(q)[None])[0] == pytest.approx(want)
    assert kl(np.log(p)[None], np.log(p)[None])[0] == pytest.approx(0.0, abs=1e-12)


def test_class_change_rule_flags_on_argmax_change_only() -> None:
    x = np.array([[5.0, 0.0], [5.0, 0.0]])
    ae = np.array([[0.0, 5.0], [4.0, 0.0]])
    d = decide(x, ae, Decision(rule="class_change", score="prob_drop", threshold=0.0))
    assert d.flagged.tolist() == [True, False]
    assert d.predicted.tolist() == [0, 0]
    assert d.detriggered.tolist() == [1, 0]


def test_score_rule_flags_above_threshold_without_class_change() -> None:
    x = np.array([[3.0, 0.0], [3.0, 0.0]])
    ae = np.array([[0.5, 0.0], [3.0, 0.0]])  # same argmax, confidence drop in the first
    rule = Decision(rule="score", score="prob_drop", threshold=0.2)
    d = decide(x, ae, rule)
    assert d.flagged.tolist() == [True, False]
    assert (d.predicted == d.detriggered).all()


def test_decisions_slice_and_concat_round_trip() -> None:
    d = Decisions(np.arange(5), np.arange(5) + 1, np.linspace(0, 1, 5), np.arange(5) % 2 == 0)
    parts = [d.slice(0, 2), d.slice(2, 5)]
    joined = Decisions.concat(parts)
    assert len(joined) == 5
    assert joined.detriggered.tolist() == d.detriggered.tolist()
    assert joined.flagged.tolist() == d.flagged.tolist()
