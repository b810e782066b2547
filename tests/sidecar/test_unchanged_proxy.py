"""Proxy mode with a gated AE (contract/unchanged.py): the upstream gets x and only the images
that AE(x) changed, and the answer is the full pair's, repair mode included."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from tests.support.promtext import scrape, value
from tests.support.server import RunningServer, binary_proxy_env, serve
from tests.support.tiny_models import TinySpec, add_trigger, clean_image

pytestmark = pytest.mark.slow
Client = Callable[[str], triton.InferenceServerClient]
SPEC = TinySpec(name="tiny")


@pytest.fixture(scope="module")
def upstream(tiny_set: Path) -> Iterator[RunningServer]:
    with serve([tiny_set], {"GUARD_INTRA_OP_THREADS": "1"}) as server:
        yield server


@pytest.fixture(scope="module")
def front(upstream: RunningServer, gated_set: Path) -> Iterator[RunningServer]:
    with serve([gated_set], binary_proxy_env(upstream, "tiny")) as server:
        yield server


def images_sent(upstream: RunningServer) -> float:
    text = httpx.get(upstream.url + "/metrics").text
    line = next(
        ln for ln in text.splitlines()
        if ln.startswith('guard_batch_size_sum{detector="detrigger",model="tiny"}')
    )  # fmt: skip
    return float(line.split()[-1])


def test_the_upstream_runs_clean_images_once(
    front: RunningServer, upstream: RunningServer, triton_client: Client
) -> None:
    clean = [clean_image(SPEC, 2 + i, seed=i) for i in range(3)]
    x = np.stack([*clean, add_trigger(clean[0])])[:, None].astype(np.float32) / 255.0
    inp = triton.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    before = images_sent(upstream)
    answer = triton_client(front.url).infer("tiny", [inp])
    assert images_sent(upstream) - before == 4 + 1  # x, and AE(x) of the triggered image alone
    assert value(scrape(front.url), "guard_unchanged_images_total", model="tiny") == 3.0
    params = answer.get_response()["parameters"]
    assert json.loads(params["guard_flagged"]) == [False, False, False, True]
    assert json.loads(params["guard_detriggered_class"]) == [2, 3, 4, 2]
    direct = triton_client(upstream.url).infer("tiny", [inp]).as_numpy("logits")
    np.testing.assert_array_equal(answer.as_numpy("logits"), direct)
    # Repair: the flagged image's row is the target on its AE(x); the others on x.
    repaired = (
        triton_client(front.url)
        .infer("tiny", [inp], parameters={"guard_mode": "repair"})
        .as_numpy("logits")
    )
    np.testing.assert_array_equal(repaired[:3], direct[:3])
    assert repaired[3].argmax() == 2 and direct[3].argmax() == 0
