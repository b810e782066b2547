"""Detector repaired below the HTTP layer: the manifest entry's checks, loading a set with a
repaired graph (and refusing one whose graph is missing, altered or of the wrong shape), and
which detector a request gets when GUARD_DEFAULT_DETECTOR is repaired."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from contract.errors import ModelFailed, ModelLoadError
from contract.manifest import Detectors
from contract.modes import Detector, Mode
from service.guard import Guard, ImageInput
from service.metrics import Metrics
from service.repository import ModelRepository
from service.runtime.modelset import ModelSet
from service.settings import Settings
from tests.support.guard import running_guard
from tests.support.tiny_models import (
    TinySpec,
    add_trigger,
    build_model_set,
    clean_image,
    png_bytes,
    sha256_of,
    target_graph,
)

ENTRY = {"file": "repaired.onnx", "sha256": "0" * 64, "input_name": "images",
         "output_name": "logits"}  # fmt: skip


@pytest.mark.parametrize(
    "extra, words",
    [
        ({}, "threshold"),  # no threshold: the entry is not calibrated
        ({"threshold": float("nan")}, "finite"),
        ({"threshold": 0.5, "score": "entropy"}, "prob_drop"),
        ({"threshold": 0.5, "file": "../repaired.onnx"}, "plain file name"),
    ],
)
def test_the_manifest_entry_is_checked(extra: dict, words: str) -> None:
    with pytest.raises(ValueError) as err:
        Detectors.model_validate({"repaired": {**ENTRY, **extra}})
    assert words in str(err.value)


def test_a_calibrated_entry_gives_the_score_rule() -> None:
    spec = Detectors.model_validate({"repaired": {**ENTRY, "threshold": 0.4, "score": "kl"}})
    assert spec.repaired is not None
    decision = spec.repaired.decision
    assert (decision.rule, decision.score, decision.threshold) == ("score", "kl", 0.4)


def _broken(repaired_set: Path, tmp_path: Path, how: str) -> Path:
    folder = tmp_path / "tinyrepaired"
    shutil.copytree(repaired_set, folder)
    if how == "missing":
        (folder / "repaired.onnx").unlink()
    elif how == "altered":
        with open(folder / "repaired.onnx", "ab") as f:
            f.write(b"\0")
    else:  # a graph for 32x32 RGB images in a 28x28 grayscale set
        onnx.save(target_graph(TinySpec(height=32, width=32, channels=3), True), folder / how)
        manifest = json.loads((folder / "manifest.json").read_text())
        entry = manifest["detectors"]["repaired"]
        entry.update(file=how, sha256=sha256_of(folder / how))
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize(
    "how, words",
    [
        ("missing", "repaired.onnx: file not found"),
        ("altered", "repaired.onnx: sha256 mismatch"),
        ("rgb.onnx", "does not match the manifest (N, 1, 28, 28)"),
    ],
)
def test_a_set_whose_repaired_graph_does_not_fit_is_not_loaded(
    repaired_set: Path, tmp_path: Path, how: str, words: str
) -> None:
    folder = _broken(repaired_set, tmp_path, how)
    with pytest.raises(ModelLoadError) as err:
        ModelSet.load(folder, Settings(models=[folder]))
    assert words in err.value.message


def test_the_default_detector_repaired_applies_where_the_set_offers_it(
    repaired_set: Path, tiny_set: Path
) -> None:
    spec = TinySpec()
    image = clean_image(spec, 3)
    images = [ImageInput(png_bytes(image)), ImageInput(png_bytes(add_trigger(image)))]
    settings = Settings(models=[repaired_set, tiny_set], default_detector=Detector.repaired)

    async def main():
        async with running_guard(settings) as guard:
            return (
                await guard.classify(images, mode=Mode.repair),  # repaired can repair
                await guard.classify(images, model="tiny"),  # tiny has none: detrigger
            )

    repaired, tiny = asyncio.run(main())
    assert repaired.rule.detector is Detector.repaired
    assert [r.flagged for r in repaired.results] == [False, True]
    assert [r.answer for r in repaired.results] == [3, 3]
    assert tiny.rule.detector is Detector.detrigger

    metrics = Metrics()
    guard = Guard(settings, metrics, ModelRepository(settings, metrics))
    model_set = ModelSet.load(repaired_set, settings)
    assert guard.detector_for(model_set, None, Mode.repair) is Detector.repaired
    assert guard.detector_for(model_set, Detector.repaired, Mode.repair) is Detector.repaired
    guard.stop()
    scored = model_set.repaired_scored(np.zeros((2, 1, 28, 28), np.float32))
    assert scored.images_ae is None and scored.logits_ae is not None  # no AE ran


@pytest.mark.parametrize("detector", list(Detector))
def test_logits_over_other_classes_than_the_manifest_fail_every_detector(
    tmp_path: Path, detector: Detector
) -> None:
    """A manifest that names 11 classes for graphs that answer 10: each detector's run refuses
    the logits (ModelFailed, the guard's 503), naming the graph, instead of judging on them."""
    spec = TinySpec(
        name="tinyall",
        rule="score",
        strip_n=8,
        both=(0.5, 0.3),
        repaired=0.5,
        detrigger_or_repaired=(0.5, 0.5),
    )
    folder = build_model_set(tmp_path / "tinyall", spec)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["classes"].append("extra")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    model_set = ModelSet.load(folder, Settings(models=[folder]))
    run = {
        Detector.detrigger: model_set.infer_scored,
        Detector.strip: model_set.strip_scored,
        Detector.both: model_set.both_scored,
        Detector.repaired: model_set.repaired_scored,
        Detector.detrigger_or_repaired: model_set.detrigger_or_repaired_scored,
    }[detector]
    with pytest.raises(ModelFailed) as err:
        run(np.full((2, 1, 28, 28), 0.5, np.float32))
    assert "logits (" in err.value.message and ", 10), expected (" in err.value.message
    assert err.value.message.endswith(", 11)")


def test_a_set_names_its_own_default_detector_and_the_setting_comes_first(
    either_set: Path, tmp_path: Path
) -> None:
    """detectors.default (fit writes detrigger_or_repaired with its twin): a request that names no
    detector gets it; GUARD_DEFAULT_DETECTOR, where set and offered, comes first; a named one
    always decides; mode repair still refuses STRIP's detectors for the default."""
    folder = tmp_path / "tinyeither"
    shutil.copytree(either_set, folder)
    raw = json.loads((folder / "manifest.json").read_text())
    raw["detectors"]["default"] = "detrigger_or_repaired"
    (folder / "manifest.json").write_text(json.dumps(raw))
    settings = Settings(models=[folder])
    assert settings.default_detector is None  # unset: each set's own
    model_set = ModelSet.load(folder, settings)
    assert model_set.default_detector(None) is Detector.detrigger_or_repaired
    assert model_set.default_detector(Detector.repaired) is Detector.repaired
    assert model_set.default_detector(Detector.strip) is Detector.detrigger_or_repaired  # not here
    metrics = Metrics()
    guard = Guard(settings, metrics, ModelRepository(settings, metrics))
    for mode in Mode:
        assert guard.detector_for(model_set, None, mode) is Detector.detrigger_or_repaired
    assert guard.detector_for(model_set, Detector.detrigger, Mode.flag) is Detector.detrigger
    guard.stop()
    del raw["detectors"]["default"]
    (folder / "manifest.json").write_text(json.dumps(raw))
    assert ModelSet.load(folder, settings).default_detector(None) is Detector.detrigger


@pytest.mark.parametrize("default", ["strip", "both", "detrigger_or_repaired"])
def test_a_default_detector_the_set_lacks_is_refused(default: str) -> None:
    with pytest.raises(ValueError, match=f"detectors.default is {default}, which the set"):
        Detectors.model_validate({"default": default})
    assert Detectors.model_validate({"default": "detrigger"}).default is Detector.detrigger
