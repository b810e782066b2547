"""The runbook's trigger locator finds the 4x4 top-left patch in a triggered image."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.deploy.promql import REPO
from tests.support.samples import load_samples

SCRIPT = REPO / "deploy" / "runbook" / "locate_trigger.py"


def locate(model_dir: Path, image: Path, *extra: str) -> dict:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(model_dir), str(image), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_triggered_image_the_region_is_the_patch(tiny_set: Path, tmp_path: Path) -> None:
    sample = next(s for s in load_samples(tiny_set) if s.triggered)
    heatmap = tmp_path / "diff.png"
    out = locate(tiny_set, sample.path, "--heatmap", str(heatmap))
    assert out["class_changed"] is True
    assert out["predicted"] == "class0"  # the backdoor's target class
    assert out["detriggered"] == f"class{sample.label}"
    assert out["region"] == {"top": 0, "left": 0, "bottom": 3, "right": 3, "pixels": 16}
    with Image.open(heatmap) as image:
        assert image.size == (28 * 8, 28 * 8)


def test_clean_image_keeps_its_class(tiny_set: Path) -> None:
    sample = next(s for s in load_samples(tiny_set) if not s.triggered)
    out = locate(tiny_set, sample.path)
    assert out["class_changed"] is False
    assert out["predicted"] == f"class{sample.label}"
