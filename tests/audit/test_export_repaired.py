"""The audit's export of a repaired target (training.audit export_repaired) from a set that
already offers detector repaired: the export is a set of its own that loads, without the
source's STRIP, both or repaired entries (each was calibrated for the source's target)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from contract.modes import Detector
from service.runtime.modelset import ModelSet
from service.settings import Settings
from tests.support.tiny_models import TinySpec, build_model_set
from training.audit.__main__ import export_repaired
from training.nets.onnx_torch import load_onnx_module

SPEC = TinySpec(name="tinyall", rule="score", strip_n=8, both=(0.5, 0.3), repaired=0.5)


def test_the_export_drops_the_sources_detector_entries_and_loads(tmp_path: Path) -> None:
    source = build_model_set(tmp_path / "tinyall", SPEC)
    manifest = json.loads((source / "manifest.json").read_text())
    summary = {
        "flagged": True,
        "target_classes": [0],
        "per_class": [{"anomaly_index": 0.0}] * SPEC.classes,
        "repair": {
            "class": 0,
            "before": {"clean_accuracy": 1.0},
            "unlearning": {"clean_accuracy": 1.0, "synth_asr": 0.0, "config": {}},
        },
    }
    module = load_onnx_module(source / "target.onnx")
    batch = torch.rand(4, 1, SPEC.height, SPEC.width)
    out = tmp_path / "tinyall-repaired"
    export_repaired(module, source, out, manifest, summary, "unlearning", batch)

    written = json.loads((out / "manifest.json").read_text())
    assert "detectors" not in written and written["repair"]["source"] == str(source)
    assert sorted(p.name for p in out.iterdir()) == [
        "detrigger.onnx",
        "manifest.json",
        "target.onnx",
    ]
    model_set = ModelSet.load(out, Settings(models=[out]))
    assert model_set.detectors == (Detector.detrigger,)
