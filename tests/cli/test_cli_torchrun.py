"""`detrigger-guard fit` under `torchrun --nproc-per-node 2` on the CPU (gloo): both ranks
train on their DistributedSampler share, rank 0 alone writes the set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support import user_models as um

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.slow
def test_fit_trains_data_parallel_under_torchrun(tmp_path: Path) -> None:
    chw = (1, 12, 16)
    src = um.export(um.Net(chw), torch.zeros(2, *chw), tmp_path / "m.onnx")
    um.write_pngs(tmp_path / "data", um.make_images(200, chw, 0)[0])
    out = tmp_path / "set"
    done = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "cli.main", "fit",
         "--target", str(src), "--data", str(tmp_path / "data"), "--out", str(out),
         "--val-fraction", "0.3", "--epochs", "2", "--batch-size", "16", "--threads", "1",
         "--target-fpr", "0.05", "--confidence", "off", "--strip-bank", "16", "--strip-n", "8",
         "--estimate-images", "20", "--device", "cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("model set written to") == 1  # rank 0 alone
    training = json.loads((out / "report.json").read_text())["training"]
    assert training["world_size"] == 2 and training["epochs_done"] == 2
    # each rank stepped through half of the 140 training images: 70 / 16 -> 5 steps
    assert "(140 images" not in done.stdout
    assert done.stdout.strip().splitlines()[-1] == f"detrigger-guard serve {out}"
