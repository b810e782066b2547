"""The figures that docs/cheaper-ae.md and the narrow report's README quote about the narrow
MNIST AE are reports/ae-candidates/narrow/mnist.json's (the tables themselves are checked by
test_ae_families_report.py)."""

from __future__ import annotations

import json

from tests.docs.mdparse import REPO, section_words

NARROW = REPO / "reports" / "ae-candidates" / "narrow"
REPORT = json.loads((NARROW / "mnist.json").read_text())
BASE, NEW = "stamped-gated", "narrow-gated"


def kl(attack: str, label: str) -> dict:
    (s,) = [s for s in REPORT["sets"] if s["attack"] == attack]
    return s["aes"][label]["kl"]


def quoted() -> list[str]:
    speed = REPORT["speed"]
    ae_cost = {
        label: sorted(speed[b]["target"]["median"] / speed[b][f"ae:{label}"]["median"]
                      for b in ("1", "64"))
        for label in (BASE, NEW)
    }  # fmt: skip
    gain = sorted(
        speed[b][f"guard:{NEW}"]["median"] / speed[b][f"guard:{BASE}"]["median"]
        for b in ("1", "64")
    )
    unchanged = {label: kl("noise", label)["largest_pixel_change"]["clean_unchanged"]
                 for label in (BASE, NEW)}  # fmt: skip
    return [
        f"{ae_cost[NEW][0]:.2f} to {ae_cost[NEW][1]:.2f} target passes",
        f"{ae_cost[BASE][0]:.2f} to {ae_cost[BASE][1]:.2f}",
        f"{gain[0]:.2f} to {gain[1]:.2f} times as fast",
        f"noise {100 * kl('noise', BASE)['detection_rate']:.2f} -> "
        f"{100 * kl('noise', NEW)['detection_rate']:.2f}%",
        f"{100 * kl('warp', BASE)['detection_rate']:.2f} -> "
        f"{100 * kl('warp', NEW)['detection_rate']:.2f}%",
        f"{100 * unchanged[NEW]:.2f}% of clean test images unchanged "
        f"({100 * unchanged[BASE]:.2f}% for the width-16 AE)",
    ]


def test_the_docs_quote_the_report() -> None:
    text = section_words(REPO / "docs" / "cheaper-ae.md", "## The narrow AE")
    for phrase in quoted():
        assert phrase in text, phrase


def test_the_verdict_is_the_reports() -> None:
    """The report judged the rule failed (on the warp), and the README says so."""
    verdict = REPORT["verdicts"][NEW]
    assert not verdict["passes"] and verdict["worst"]["attack"] == "warp"
    text = section_words(NARROW / "README.md", "## Verdict")
    assert "The rule fails on one family, the warp" in text
    assert f"{100 * kl('warp', BASE)['detection_rate']:.2f}%" in text
