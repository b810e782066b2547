"""Fixtures shared by the test suites: tiny model sets and a real guard server.

The builders and the server helper live in tests/support/ so that other suites (deploy) and
the benchmark can import them directly.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Apps built in the test process (TestClient) serve no gRPC: its default port, 8001, is shared
# by every test session on the machine. tests/support/server.py gives each real server a free
# port; gRPC tests ask for one.
os.environ.setdefault("GUARD_GRPC_PORT", "0")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.server import RunningServer, serve  # noqa: E402
from tests.support.tiny_models import TinySpec, build_model_set  # noqa: E402

GRAY = TinySpec(name="tiny")
RGB = TinySpec(name="tinyrgb", height=32, width=32, channels=3)
SCORE = TinySpec(name="tinykl", rule="score", score="kl", threshold=1.0)
STRIP = TinySpec(name="tinystrip", strip_n=8)
BOTH = TinySpec(name="tinyboth", strip_n=8, both=(0.5, 0.3))
REPAIRED = TinySpec(name="tinyrepaired", rule="score", repaired=0.5)
EITHER = TinySpec(name="tinyeither", rule="score", repaired=0.5, detrigger_or_repaired=(0.5, 0.5))


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_model_set(root / "tiny", GRAY, samples=18)
    build_model_set(root / "tinyrgb", RGB)
    build_model_set(root / "tinykl", SCORE)
    build_model_set(root / "tinystrip", STRIP)
    build_model_set(root / "tinyboth", BOTH)
    build_model_set(root / "tinyrepaired", REPAIRED)
    build_model_set(root / "tinyeither", EITHER)
    return root


@pytest.fixture(scope="session")
def tiny_set(model_root: Path) -> Path:
    """A 28x28 grayscale set, rule class_change, with 18 clean and 18 triggered samples."""
    return model_root / "tiny"


@pytest.fixture(scope="session")
def gated_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny set (named "tiny") with its AE gated at 0.1 (training/nets/gate.py): the tiny
    AE moves clean images by at most 19/255, so they come back bit for bit, triggered ones
    (a white corner zeroed) do not."""
    from training.nets.gate import gate_model_set

    folder = build_model_set(tmp_path_factory.mktemp("gated") / "tiny", GRAY)
    with gate_model_set(folder, 0.1, "test"):
        pass
    return folder


@pytest.fixture(scope="session")
def rgb_set(model_root: Path) -> Path:
    """A 32x32 RGB set."""
    return model_root / "tinyrgb"


@pytest.fixture(scope="session")
def kl_set(model_root: Path) -> Path:
    """A 28x28 grayscale set with rule score on kl > 1.0."""
    return model_root / "tinykl"


@pytest.fixture(scope="session")
def strip_set(model_root: Path) -> Path:
    """The tiny grayscale set plus a STRIP bank (27 clean images, n = 8, threshold 0.3 bits)."""
    return model_root / "tinystrip"


@pytest.fixture(scope="session")
def both_set(model_root: Path) -> Path:
    """tinystrip plus detector both: prob_drop > 0.5 or STRIP entropy < 0.3 bits."""
    return model_root / "tinyboth"


@pytest.fixture(scope="session")
def repaired_set(model_root: Path) -> Path:
    """The tiny grayscale set (rule score, prob_drop > 0.5) plus detector repaired: the target
    against its copy that ignores the patch, prob_drop > 0.5."""
    return model_root / "tinyrepaired"


@pytest.fixture(scope="session")
def either_set(model_root: Path) -> Path:
    """tinyrepaired plus detector detrigger_or_repaired: prob_drop > 0.5 against AE(x) or
    against the repaired graph."""
    return model_root / "tinyeither"


# Limits small enough for the limit tests to be cheap.
SERVER_ENV = {
    "GUARD_MAX_BODY_BYTES": str(1024 * 1024),
    "GUARD_MAX_IMAGES_PER_REQUEST": "40",
    "GUARD_MAX_IMAGE_PIXELS": str(512 * 512),
    "GUARD_MAX_BATCH_SIZE": "16",
    "GUARD_MAX_QUEUE_IMAGES": "256",
    "GUARD_INTRA_OP_THREADS": "1",
}


@pytest.fixture(scope="session")
def guard_server(tiny_set: Path, rgb_set: Path, kl_set: Path) -> Iterator[RunningServer]:
    """One real uvicorn serving the three tiny sets (tiny is the default), shared by tests
    that only compare metric deltas."""
    with serve([tiny_set, rgb_set, kl_set], SERVER_ENV) as server:
        yield server
