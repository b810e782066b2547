"""training.fit.twin on a small classifier exported to ONNX: the copy keeps the target's graph,
its answers on clean images and the recipe's record; --twin-reinit-head starts the final layer
afresh and nothing else; --twin-head-penalty turns the final layer away from the target's at
the target's norm."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from tests.support import user_models as um
from training.data.trigger_sampler import FAMILY_SETS, SamplerSpec
from training.data.triggers import Trigger
from training.fit.twin import (
    TwinConfig,
    _adversarial,
    _stamp,
    adversarial_radius,
    fine_tune_twin,
    reinit_final_layer,
)
from training.nets.onnx_torch import load_onnx_module

CHW = (1, 16, 16)
PLAIN = replace(TwinConfig(), reinit_head=False, head_penalty=0.0, triggers=0.0)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    net = um.train_backdoored(CHW, n=1200, epochs=4)
    return um.export(net, torch.zeros(2, *CHW), tmp_path_factory.mktemp("twin") / "m.onnx")


def uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def test_the_final_layer_alone_is_drawn_anew(target: Path) -> None:
    before = load_onnx_module(target)
    after = load_onnx_module(target)
    reinit_final_layer(after, torch.Generator().manual_seed(0))
    final = after.final
    assert final.op_type == "Gemm"
    weight, bias = after.param(final.input[1]), after.param(final.input[2])
    assert 0.005 < float(weight.detach().std()) < 0.015 and float(bias.detach().abs().max()) == 0.0
    changed = {
        name
        for name, p in after.named_parameters()
        if not torch.equal(p, dict(before.named_parameters())[name])
    }
    assert changed == {after.names[final.input[1]], after.names[final.input[2]]}


@pytest.mark.parametrize(("reinit_head", "head_penalty"), [(False, 0.0), (True, 0.2)])
def test_the_twin_keeps_the_targets_graph_and_answers(
    target: Path, tmp_path: Path, reinit_head: bool, head_penalty: float
) -> None:
    train, _ = um.make_images(800, CHW, 3)
    val, _ = um.make_images(300, CHW, 4)
    cfg = replace(
        TwinConfig(), epochs=6, images=600, reinit_head=reinit_head, head_penalty=head_penalty
    )
    out = tmp_path / "twin.onnx"
    lines: list[str] = []
    record = fine_tune_twin(target, uint8(train), uint8(val), out, cfg, False, lines.append)
    assert record["method"] == "fine-tune" and record["config"] == asdict(cfg)
    assert record["adversarial_radius"] == 0.1  # greyscale, by default
    assert (
        record["config"]["triggers"] == 0.5 and record["config"]["trigger_families"] == "extended"
    )
    assert record["images"] == 600 and len(record["epoch_losses"]) == 6
    assert record["steps"] == 6 * 10 and not record["stopped_by_budget"]
    assert record["val_images"] == 300 and record["val_agreement"] >= 0.9, record
    assert lines[-1].startswith("twin: fine-tuned on 600 images in ")
    graph, source = onnx.load(str(out)), onnx.load(str(target))
    assert [n.op_type for n in graph.graph.node] == [n.op_type for n in source.graph.node]
    assert graph.graph.initializer[0].raw_data != source.graph.initializer[0].raw_data


def test_the_head_penalty_turns_the_final_layer_away_at_the_targets_norm(
    target: Path, tmp_path: Path
) -> None:
    train, _ = um.make_images(800, CHW, 3)
    val, _ = um.make_images(300, CHW, 4)
    original = load_onnx_module(target)
    head0 = original.param(original.final.input[1]).detach().flatten()

    def head(penalty: float) -> tuple[torch.Tensor, dict]:
        cfg = replace(
            TwinConfig(), epochs=4, images=600, reinit_head=True, head_penalty=penalty,
            adversarial=0.0,  # the penalty alone
        )  # fmt: skip
        out = tmp_path / f"twin-{penalty}.onnx"
        record = fine_tune_twin(target, uint8(train), uint8(val), out, cfg, False, lambda _: None)
        twin = load_onnx_module(out)
        return twin.param(twin.final.input[1]).detach().flatten(), record

    free, _ = head(0.0)
    pushed, record = head(0.2)
    cosine = torch.nn.functional.cosine_similarity
    assert float(pushed.norm()) == pytest.approx(float(head0.norm()), rel=1e-4)
    assert float(cosine(pushed, head0, 0)) < float(cosine(free, head0, 0)) - 0.1
    # still the target's classifier: on these tiny images a held-norm head learns more slowly
    assert record["config"]["head_penalty"] == 0.2 and record["val_agreement"] >= 0.8, record


def test_a_small_folder_gets_as_many_steps_as_a_large_one(target: Path, tmp_path: Path) -> None:
    """An epoch is ``images`` images' worth of steps: 200 images under a cap of 640 are gone
    through 3.2 times an epoch, so the fresh head gets its steps."""
    train, _ = um.make_images(200, CHW, 3)
    val, _ = um.make_images(300, CHW, 4)
    cfg = replace(TwinConfig(), epochs=6, images=640)
    record = fine_tune_twin(target, uint8(train), uint8(val), tmp_path / "t.onnx", cfg, False)
    assert record["images"] == 200 and record["steps"] == 6 * 10
    assert record["val_agreement"] >= 0.9, record


def test_a_time_budget_ends_the_fine_tune_and_says_so(target: Path, tmp_path: Path) -> None:
    train, _ = um.make_images(800, CHW, 3)
    cfg = replace(TwinConfig(), epochs=50, images=800)
    lines: list[str] = []
    record = fine_tune_twin(target, uint8(train), uint8(train[:100]), tmp_path / "t.onnx", cfg,
                            False, lines.append, time_budget=1.0)  # fmt: skip
    assert record["stopped_by_budget"] and 0 < record["steps"] < 50 * 13, record
    assert record["time_budget"] == 1.0 and (tmp_path / "t.onnx").is_file()
    assert any("the time budget of 1 s ended the fine-tune after" in line for line in lines)


def test_a_recipe_that_cannot_run_is_refused(target: Path, tmp_path: Path) -> None:
    x = np.zeros((10, *CHW), np.uint8)
    with pytest.raises(ValueError, match="twin epochs must be >= 1"):
        fine_tune_twin(target, x, x, tmp_path / "t.onnx", replace(TwinConfig(), epochs=0))
    assert not (tmp_path / "t.onnx").exists()


def test_adversarial_unlearning_erases_a_faint_image_wide_backdoor(tmp_path: Path) -> None:
    """A backdoor keyed to a faint sine grating survives a plain fine-tune (the target's head
    kept: on these tiny images a fresh one alone erases it) far better than one against the
    universal perturbation (TwinConfig.adversarial): the perturbation finds the grating's
    direction, the easiest change that moves every image to one class."""
    grating = Trigger(kind="noise", content="sine", amplitude=0.08)
    net = um.train_backdoored(CHW, n=1500, epochs=6, trigger=grating)
    target = um.export(net, torch.zeros(2, *CHW), tmp_path / "sig.onnx")
    train, _ = um.make_images(1200, CHW, 3)
    test, labels = um.make_images(400, CHW, 5)
    triggered = np.asarray(grating(test[labels != um.TARGET].copy()), np.float32)
    with torch.no_grad():
        fired = net(torch.from_numpy(triggered)).argmax(1) == um.TARGET
    assert float(fired.float().mean()) > 0.8  # the backdoor works on the target

    def kept(adversarial: float) -> float:
        cfg = replace(PLAIN, epochs=4, images=1200, adversarial=adversarial)
        out = tmp_path / f"twin-{adversarial}.onnx"
        record = fine_tune_twin(target, uint8(train), uint8(test), out, cfg, False, print)
        assert record["val_agreement"] >= 0.9, record
        twin = load_onnx_module(out).eval()
        with torch.no_grad():
            answers = twin(torch.from_numpy(triggered[fired.numpy()])).argmax(1)
        return float((answers == um.TARGET).float().mean())

    plain, adversarial = kept(0.0), kept(0.1)
    assert plain > 0.05 and adversarial < 0.5 * plain, (plain, adversarial)


def test_the_universal_perturbation_stays_in_its_ball_on_half_the_batch() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    delta = torch.zeros(1, 1, 4, 4)
    for _ in range(5):
        delta, batch = _adversarial(model, x, y, delta, 0.1)
    assert float(delta.abs().max()) == pytest.approx(0.1)
    assert torch.equal(batch[4:], x[4:]) and not torch.equal(batch[:4], x[:4])
    assert float(batch.min()) >= 0.0 and float(batch.max()) <= 1.0
    loss = torch.nn.functional.cross_entropy
    with torch.no_grad():
        assert float(loss(model(batch[:4]), y[:4])) > float(loss(model(x[:4]), y[:4]))


def test_the_radius_follows_the_images_channels_unless_given() -> None:
    assert adversarial_radius(TwinConfig(), 1) == 0.1
    assert adversarial_radius(TwinConfig(), 3) == 0.03
    assert adversarial_radius(replace(TwinConfig(), adversarial=0.0), 3) == 0.0
    assert adversarial_radius(replace(TwinConfig(), adversarial=0.05), 1) == 0.05


def test_triggers_go_on_the_rows_the_perturbation_leaves() -> None:
    x = torch.full((8, 1, 16, 16), 0.5)
    spec = SamplerSpec(families=FAMILY_SETS["base"], exclude=("blend", "additive"))  # patches
    out = _stamp(x, 4, 0.5, np.random.default_rng(0), spec)
    changed = (out != x).flatten(1).any(1)
    assert changed.tolist() == [False] * 4 + [True] * 2 + [False] * 2
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(_stamp(x, 0, 0.0, np.random.default_rng(0), spec), x)
    assert (_stamp(x, 0, 1.0, np.random.default_rng(0), spec) != x).flatten(1).any(1).all()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"triggers": 1.5}, "twin trigger share must lie in [0, 1]"),
        ({"trigger_families": "all"}, "twin trigger families 'all': not one of base,"),
        ({"trigger_exclude": ("nothing",)}, "cannot exclude 'nothing'"),
        ({"trigger_exclude": ("patch", "blend", "additive")}, "leaves no trigger family"),
    ],
)
def test_a_trigger_recipe_that_cannot_run_is_refused(changes: dict, message: str) -> None:
    problems = replace(TwinConfig(), **{"trigger_families": "base", **changes}).problems()
    assert any(message in p for p in problems), problems
