"""Training writes manifests through the contract's own schema (contract.manifest.Manifest)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.nets.manifest_file import write_manifest

MANIFEST = {
    "format_version": 1,
    "name": "x",
    "input": {"height": 28, "width": 28, "channels": 1},
    "classes": ["a", "b"],
    "target": {"file": "target.onnx", "sha256": "0" * 64, "input_name": "images",
               "output_name": "logits"},
    "detrigger": {"file": "detrigger.onnx", "sha256": "0" * 64, "input_name": "images",
                  "output_name": "images_out"},
    "decision": {"rule": "class_change", "score": "prob_drop", "threshold": 0.5},
}  # fmt: skip


def test_a_manifest_the_service_would_refuse_is_not_written(tmp_path: Path) -> None:
    bad = {**MANIFEST, "target": {**MANIFEST["target"], "file": "../target.onnx"}}
    with pytest.raises(ValueError, match="breaks the model contract"):
        write_manifest(tmp_path, bad)
    assert not (tmp_path / "manifest.json").exists()


def test_a_valid_manifest_is_written_field_for_field(tmp_path: Path) -> None:
    written = write_manifest(tmp_path, MANIFEST).read_text()
    assert written == json.dumps(MANIFEST, indent=2) + "\n"
