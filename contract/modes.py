"""What a request may ask of the guard: the mode (what a flagged image gets) and the detector."""

from __future__ import annotations

from enum import Enum


class Mode(str, Enum):
    """What /classify answers for a flagged image."""

    flag = "flag"  # always answer the class on the input; mark flagged images
    block = "block"  # flagged images get no class at all
    repair = "repair"  # answer with the class after de-triggering


# A plain Enum, not a str one: as a str subclass the member ``strip`` would shadow str.strip.
class Detector(Enum):
    """Which input-level detector decides whether an image carries a trigger."""

    detrigger = "detrigger"  # the de-trigger AE (Kwon): every model set has it
    strip = "strip"  # STRIP (Gao et al.): sets whose manifest has detectors.strip
    both = "both"  # both on one batch, OR-fused (contract.fusion): sets with detectors.both
    # the target against a repaired copy of itself (contract.manifest.RepairedSpec): sets with
    # detectors.repaired
    repaired = "repaired"
    # detrigger and repaired on one batch, OR-fused (contract.fusion): sets with
    # detectors.detrigger_or_repaired
    detrigger_or_repaired = "detrigger_or_repaired"
