"""The demo images a model set ships in samples/: clean_03_label7.png, triggered_03_label7.png."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# The shipped demo set (make reproduce DATASET=mnist); the end-to-end tests use it.
SHIPPED_MNIST = Path(__file__).resolve().parents[2] / "models" / "mnist"

_NAME = re.compile(r"^(clean|triggered)_(\d+)_label(\d+)\.png$")


@dataclass(frozen=True)
class Sample:
    path: Path
    triggered: bool
    label: int

    def read(self) -> bytes:
        return self.path.read_bytes()


def load_samples(model_dir: Path) -> list[Sample]:
    samples = []
    for path in sorted((model_dir / "samples").glob("*.png")):
        match = _NAME.match(path.name)
        if match:
            samples.append(Sample(path, match.group(1) == "triggered", int(match.group(3))))
    return samples
