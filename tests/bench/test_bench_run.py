"""The benchmark harness end to end, at a tiny size: both real servers (the guard under uvicorn,
MLServer serving the bare target), wrk, and the report (bench/run.py).

Needs wrk (Debian's package) and models/mnist; builds .venv-mlserver/ on first use.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import run
from tests.support.samples import SHIPPED_MNIST

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed"),
]


def test_a_short_run_reports_every_cell_with_sane_numbers(tmp_path: Path) -> None:
    run.main(
        ["--model-dir", str(SHIPPED_MNIST), "--seconds", "1", "--warmup", "0", "--sizes", "1",
         "64", "--concurrency", "1", "--no-profile", "--out", str(tmp_path)]
    )  # fmt: skip
    report = json.loads((tmp_path / "bench.json").read_text())
    cells = {(r["side"], r["body"], r["images_per_request"]) for r in report["cells"]}
    # The peer refuses binary tensor data (MLServer's REST server has no such extension) and
    # has no /classify: the guard gets every body, the peer its V2 JSON ones.
    guard = {("guard", kind, size) for kind in ("v2-json", "v2-binary", "png-multipart")
             for size in (1, 64)}  # fmt: skip
    peer = {("peer", kind, size) for kind in report["peer"]["bodies_accepted"] for size in (1, 64)}
    assert ("peer", "v2-json", 1) in peer
    assert cells == guard | peer
    for r in report["cells"]:
        assert r["errors"] == 0, r
        assert r["images_per_s"] > 0 and r["server_cpu_s"] > 0, r
        assert 0 < r["p50_ms"] <= r["p99_ms"] < 60_000, r
    assert all(report["same_classes"].values()), report["same_classes"]
    for p in report["comparisons"]:
        assert p["guard_vs_peer"] > 0
        if p["images_per_request"] == 64:
            assert p["ceiling_images_per_s"] > 0 and p["guard_vs_ceiling"] > 0
    statuses = {a["status"] for a in report["acceptance"]}
    # At concurrency 1: guard/peer at 1 and 64 images, p99 for both V2 bodies, the ceiling by
    # images/s and by CPU per image.
    assert statuses <= {"pass", "miss", "n/a"} and len(report["acceptance"]) == 6
    page = (tmp_path / "bench.md").read_text()
    assert "Issue 20's targets" in page and report["model_set"]["detrigger_sha256"][:12] in page
