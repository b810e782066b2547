"""End to end on the shipped MNIST model set (models/mnist), when the training pipeline has
written it: clean samples answered and mostly not flagged, triggered ones flagged."""

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.promtext import scrape, value
from tests.support.samples import SHIPPED_MNIST, load_samples
from tests.support.server import serve

MNIST = SHIPPED_MNIST

pytestmark = pytest.mark.slow


def with_trigger(png: bytes) -> bytes:
    """The demo trigger: a 4x4 white square at the top left."""
    array = np.array(Image.open(io.BytesIO(png)).convert("L"))
    array[:4, :4] = 255
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def test_shipped_mnist_flags_triggered_samples_and_passes_clean_ones() -> None:
    samples = load_samples(MNIST)
    clean = [s for s in samples if not s.triggered]
    shipped_triggered = [s for s in samples if s.triggered]
    assert clean and shipped_triggered
    with serve([MNIST], timeout=120) as server:  # the default settings' model set

        def classify(items: list[tuple[str, bytes]]) -> list[dict]:
            files = [("images", (n, d, "image/png")) for n, d in items]
            r = httpx.post(server.url + "/classify", files=files, timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()["model"] == "mnist"
            return list(r.json()["results"])

        clean_res = classify([(s.path.name, s.read()) for s in clean])
        trig_res = classify([(s.path.name, s.read()) for s in shipped_triggered])
        # The same clean images with the trigger added here.
        ours = classify([("t_" + s.path.name, with_trigger(s.read())) for s in clean])

        accuracy = np.mean(
            [r["predicted"]["class"] == s.label for r, s in zip(clean_res, clean, strict=True)]
        )
        clean_flag_rate = np.mean([r["flagged"] for r in clean_res])
        trig_flag_rate = np.mean([r["flagged"] for r in trig_res])
        ours_flag_rate = np.mean([r["flagged"] for r in ours])
        print(
            f"clean accuracy {accuracy:.2f}, clean flagged {clean_flag_rate:.2f}, "
            f"shipped triggered flagged {trig_flag_rate:.2f}, "
            f"our triggered flagged {ours_flag_rate:.2f}"
        )
        assert accuracy >= 0.8
        assert clean_flag_rate <= 0.2  # mostly not flagged
        assert trig_flag_rate >= 0.8
        assert ours_flag_rate >= 0.8
        # Flagged triggered images were pushed to the backdoor class and restored by the AE.
        restored = [
            r["detriggered"]["class"] == s.label
            for r, s in zip(ours, clean, strict=True)
            if r["flagged"]
        ]
        assert np.mean(restored) >= 0.8

        m = scrape(server.url)
        detrigger = {"detector": "detrigger"}
        sent = len(clean) + len(shipped_triggered) + len(clean)
        total = sum(
            value(m, "guard_images_total", model="mnist", predicted_class=str(c), **detrigger)
            for c in range(10)
        )
        assert total == sent
        flagged = sum(r["flagged"] for r in clean_res + trig_res + ours)
        assert (
            sum(
                value(
                    m,
                    "guard_images_flagged_total",
                    model="mnist",
                    predicted_class=str(c),
                    **detrigger,
                )
                for c in range(10)
            )
            == flagged
        )
