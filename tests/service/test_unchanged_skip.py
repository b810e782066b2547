"""The target's second pass skipped for images that the AE returns unchanged (issue 20;
contract/unchanged.py): with a gated AE, clean images run once, and every decision, score and
logit is the one the full pair [x; AE(x)] gives; in the joined graph and in two calls alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from contract.scoring import decide
from service.runtime.modelset import ModelSet
from service.settings import Settings
from tests.support.tiny_models import TinySpec, add_trigger, clean_image

SPEC = TinySpec(name="tiny")


def images(n: int) -> np.ndarray:
    """n images, every third one triggered."""
    out = [clean_image(SPEC, 1 + i % 9, seed=i) for i in range(n)]
    out = [add_trigger(im) if i % 3 == 2 else im for i, im in enumerate(out)]
    return np.stack(out)[:, None].astype(np.float32) / 255.0


@pytest.mark.parametrize("joined", [True, False])
@pytest.mark.parametrize("n", [1, 3, 8, 64])
def test_the_skip_gives_the_full_pairs_answer(gated_set: Path, joined: bool, n: int) -> None:
    ms = ModelSet.load(gated_set, Settings(models=[gated_set]))
    assert ms.fused is not None  # the joined graph passed its parity check, gate and all
    if not joined:
        ms = ModelSet(ms.folder, ms.manifest, ms.target, ms.detrigger)
    x = images(n)
    got = ms.infer_scored(x)
    triggered = np.arange(n) % 3 == 2
    assert got.images_ae is not None and got.logits_ae is not None
    unchanged = np.equal(got.images_ae, x).reshape(n, -1).all(axis=1)
    assert unchanged.tolist() == (~triggered).tolist()
    # The reference: the target on the full pair, every row run.
    full = ms.target.run(np.concatenate([x, got.images_ae]))
    want = decide(full[:n], full[n:], ms.manifest.decision)
    assert got.decisions.flagged.tolist() == want.flagged.tolist() == triggered.tolist()
    assert np.array_equal(got.decisions.predicted, want.predicted)
    assert np.array_equal(got.decisions.detriggered, want.detriggered)
    np.testing.assert_allclose(got.decisions.score, want.score, atol=1e-6)
    np.testing.assert_array_equal(got.logits_x, full[:n])
    np.testing.assert_array_equal(got.logits_ae[~triggered], full[:n][~triggered])
    np.testing.assert_allclose(got.logits_ae, full[n:], atol=1e-6)


def test_the_joined_graph_runs_the_target_on_the_changed_rows_only(gated_set: Path) -> None:
    ms = ModelSet.load(gated_set, Settings(models=[gated_set]))
    assert ms.fused is not None
    logits, _, changed = ms.fused.run(images(6))
    assert changed.tolist() == [False, False, True] * 2
    assert logits.shape == (6 + 2, SPEC.classes)
