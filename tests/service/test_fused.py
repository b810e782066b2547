"""The de-trigger detector's AE and target joined into one graph at load time
(service/runtime/fused.py): the same outputs as two calls, bit for bit, or two calls."""

from pathlib import Path

import numpy as np
import onnx
import pytest

from service.runtime.fused import CannotFuse, FusedModel, check_parity, fuse
from service.runtime.modelset import ModelSet
from service.runtime.onnx import OnnxModel
from service.settings import Settings
from tests.support.tiny_models import (
    TinySpec,
    add_trigger,
    clean_image,
    detrigger_graph,
    target_graph,
)


def batch(n: int) -> np.ndarray:
    spec = TinySpec()
    clean = [clean_image(spec, 1 + i % 9, seed=i) for i in range(n)]
    images = [add_trigger(im) if i % 2 else im for i, im in enumerate(clean)]
    return np.stack(images)[:, None].astype(np.float32) / 255.0


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_a_set_runs_its_joined_graph_with_the_two_calls_outputs(tiny_set: Path, n: int) -> None:
    ms = ModelSet.load(tiny_set, Settings(models=[tiny_set]))
    assert ms.fused is not None
    x = batch(n)
    joined = ms.infer_scored(x)
    apart = ModelSet(ms.folder, ms.manifest, ms.target, ms.detrigger).infer_scored(x)
    for got, want in [
        (joined.logits_x, apart.logits_x),
        (joined.logits_ae, apart.logits_ae),
        (joined.images_ae, apart.images_ae),
        (joined.decisions.score, apart.decisions.score),
    ]:
        assert got is not None and want is not None
        assert got.shape == want.shape and np.array_equal(got, want)
    assert joined.decisions.flagged.tolist() == [bool(i % 2) for i in range(n)]


def test_graphs_of_different_opsets_stay_two_calls(tiny_set: Path) -> None:
    spec = TinySpec()
    ae, target = detrigger_graph(spec), target_graph(spec)
    target.opset_import[0].version = ae.opset_import[0].version - 1
    with pytest.raises(CannotFuse, match="opset"):
        fuse(
            ae.SerializeToString(), ("images", "images_out"),
            target.SerializeToString(), ("images", "logits"),
        )  # fmt: skip


def test_a_joined_graph_that_differs_is_not_used(tiny_set: Path) -> None:
    """check_parity compares bit for bit: a joined graph whose AE is another AE (here the
    identity) fails it, and the set keeps its two calls."""
    spec = TinySpec()
    ae = detrigger_graph(spec)
    identity = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["images"], ["images_out"])], "identity",
            list(ae.graph.input), list(ae.graph.output),
        ),
        opset_imports=list(ae.opset_import),
    )  # fmt: skip
    identity.ir_version = ae.ir_version
    settings = Settings(models=[tiny_set])
    data = fuse(
        identity.SerializeToString(), ("images", "images_out"),
        target_graph(spec).SerializeToString(), ("images", "logits"),
    )  # fmt: skip
    wrong = FusedModel(OnnxModel.load("joined", data, "ae/images", "guard_logits", settings))
    ms = ModelSet.load(tiny_set, settings)
    assert not check_parity(wrong, ms.detrigger, ms.target, batch(4))
    assert ms.fused is not None and check_parity(ms.fused, ms.detrigger, ms.target, batch(4))
