"""The audit as one function over tensors: synthesise -> detect -> identify -> prune -> unlearn.
No files, no datasets: the CLI (`training.audit.__main__`) and the tests both call `run_audit`."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from training.data.triggers import Trigger
from training.inversion.anomaly import anomaly_index, flagged_by_index, flagged_classes
from training.inversion.fullimage import FAMILIES, FamilyResult, synthesize_family
from training.inversion.identify import (
    accuracy,
    activation_gap,
    mask_iou,
    neuron_overlap,
    success,
    synth_stamp,
    trigger_pixels,
)
from training.inversion.prune import prune_curve, rank_neurons
from training.inversion.restarts import candidates, kept, stack
from training.inversion.synthesis import SynthConfig, SynthResult, synthesize
from training.inversion.unlearn import UnlearnConfig, unlearn

# Set by `python -m training.audit.families` on the clean control sets (reports/audit/families.md).
FAMILY_THRESHOLDS = {"blend": 2.0, "warp": 4.5}


@dataclass
class AuditConfig:
    synth: SynthConfig = field(default_factory=SynthConfig)
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)
    anomaly_threshold: float = 2.0
    prune_stop_asr: float = 0.01  # stop pruning once the synthesised trigger's success is below
    prune_step: int = 0  # neurons per pruning step; 0 = 1% of the layer (at least 1)
    prune_curve_share: float = 0.5  # the reported curve goes on to this share of neurons
    overlap_share: float = 0.05  # top share of penultimate neurons compared for overlap
    repair: str = "flagged"  # flagged: repair only a flagged model | always | never
    restarts: int = (
        5  # new searches for the candidate class's trigger (training.inversion.restarts)
    )
    keep_factor: float = 2.0  # unlearn every reached trigger up to this times the smallest L1
    # Full-image trigger families searched beside the mask (training.inversion.fullimage), their
    # search settings, and each family's anomaly-index threshold, set on the clean controls
    # (reports/audit/families.md: no control's class reaches it).
    families: tuple[str, ...] = FAMILIES
    family_synth: SynthConfig = field(
        default_factory=lambda: SynthConfig(steps=500, lr=0.1, asr_target=0.9, beta_init=1e-2)
    )
    family_thresholds: dict[str, float] = field(default_factory=lambda: dict(FAMILY_THRESHOLDS))


@dataclass
class AuditResult:
    summary: dict  # JSON-ready numbers
    synth: SynthResult
    # restarts.Candidate: the candidate class's triggers (sweep and restarts), smallest first
    candidates: list = field(default_factory=list)
    repair_triggers: list = field(default_factory=list)  # the candidates that are unlearned
    pruned: Any = None  # OnnxModule with the pruning mask set
    unlearned: Any = None  # fine-tuned OnnxModule
    prune_curve: list[dict] = field(default_factory=list)
    families: dict[str, FamilyResult] = field(default_factory=dict)  # full-image searches
    # the full-image triggers unlearned (fullimage.FullImageTrigger), beside repair_triggers
    repair_full: list = field(default_factory=list)


@dataclass
class Probe:
    """What a model is measured on after each step: the candidate class `k` with its synthesised
    `stamp` on `x_other` (test images of other classes), and the real backdoor when known."""

    test_x: torch.Tensor
    test_y: torch.Tensor
    k: int
    stamp: Any
    x_other: torch.Tensor
    real_target: int | None = None
    real_trigger: Trigger | None = None

    def measure(self, m: Any) -> dict:
        out = {
            "clean_accuracy": accuracy(m, self.test_x, self.test_y),
            "synth_asr": success(m, self.x_other, self.stamp, self.k),
        }
        if self.real_trigger is not None:
            others = self.test_x[self.test_y != self.real_target]
            out["real_asr"] = success(m, others, self.real_trigger, self.real_target)
            # The floor of real_asr: clean images of other classes the model already sends to the
            # target class without any trigger (class confusion, e.g. shirt / T-shirt).
            out["clean_to_target"] = success(m, others, lambda v: v, self.real_target)
        return out


def class_summary(synth: SynthResult, flagged: list[int], cfg: AuditConfig) -> dict:
    """The verdict and, per class, its synthesised trigger's mask L1, anomaly index and success."""
    index = anomaly_index(synth.l1)
    return {
        "flagged": bool(flagged),
        "target_classes": flagged,
        "anomaly_threshold": cfg.anomaly_threshold,
        "per_class": [
            {
                "class": k,
                "mask_l1": float(synth.l1[k]),
                "anomaly_index": float(index[k]),
                "synth_asr_clean_set": float(synth.asr[k]),
                "reached_asr_target": bool(synth.reached[k]),
                "final_beta": float(synth.betas[k]),
            }
            for k in range(len(synth.l1))
        ],
    }


def family_summaries(families: dict[str, FamilyResult], cfg: AuditConfig) -> dict:
    """Per full-image family: its threshold, the classes it flags and, per class, the size of
    its smallest trigger, the anomaly index (of log sizes) and the trigger's success."""
    out = {}
    for name, r in families.items():
        threshold = cfg.family_thresholds[name]
        index = r.anomaly_index()
        out[name] = {
            "anomaly_threshold": threshold,
            "flagged": flagged_by_index(index, threshold),
            "per_class": [
                {
                    "class": k,
                    "size": float(r.size[k]),
                    "anomaly_index": float(index[k]),
                    "synth_asr_clean_set": float(r.asr[k]),
                    "reached_asr_target": bool(r.reached[k]),
                }
                for k in range(len(r.size))
            ],
        }
    return out


def verdict(mask_flagged: list[int], families: dict) -> list[int]:
    """Every flagged class once: the mask's in its order, then the full-image families' by their
    highest anomaly index."""
    best: dict[int, float] = {}
    for fam in families.values():
        for k in fam["flagged"]:
            best[k] = max(best.get(k, -np.inf), fam["per_class"][k]["anomaly_index"])
    rest = sorted((k for k in best if k not in mask_flagged), key=lambda k: -best[k])
    return [*mask_flagged, *rest]


def restarts_summary(
    cands: list, kept_triggers: list, restarts: int, cfg: AuditConfig, true_pixels: Any
) -> dict:
    """Every trigger found for the candidate class (sweep and restarts) and whether it is kept."""
    return {
        "count": restarts,
        "keep_factor": cfg.keep_factor,
        "candidates": [
            {
                "start": c.start,
                "mask_l1": c.l1,
                "synth_asr_clean_set": c.asr,
                "reached_asr_target": c.reached,
                "kept": c in kept_triggers,
                **({} if true_pixels is None else mask_iou(c.mask, true_pixels)),
            }
            for c in cands
        ],
    }


def identification(
    model: Any,
    synth_x: torch.Tensor,
    found: dict,
    mask: Any,
    probe: Probe,
    true_pixels: Any,
    cfg: AuditConfig,
) -> tuple[dict, torch.Tensor]:
    """(how well the trigger found, `found` says which, matches the real one when known; the
    penultimate layer's activation gap under the synthesised stamp, which ranks neurons for
    pruning). mask: the found mask, None for a full-image trigger."""
    ident: dict = {
        "class": probe.k,
        **found,
        "synth_asr_test": success(model, probe.x_other, probe.stamp, probe.k),
    }
    gap_synth = activation_gap(model, synth_x, probe.stamp)
    real = probe.real_trigger is not None and probe.real_target is not None
    if real and true_pixels is not None:
        if mask is not None:
            ident.update(mask_iou(mask, true_pixels))
        gap_real = activation_gap(model, synth_x, probe.real_trigger)
        ident["neuron_overlap"] = neuron_overlap(gap_synth, gap_real, cfg.overlap_share)
        ident["real_asr_test"] = success(
            model,
            probe.test_x[probe.test_y != probe.real_target],
            probe.real_trigger,
            probe.real_target,
        )
    return ident, gap_synth


def prune(
    model: Any, probe: Probe, gap_synth: torch.Tensor, cfg: AuditConfig
) -> tuple[Any, list[dict], dict]:
    """A copy of `model` with the neurons the synthesised stamp excites most pruned until its
    success falls below cfg.prune_stop_asr: (pruned model, the curve, its summary)."""
    pruned = copy.deepcopy(model)
    width = len(pruned.neuron_mask)
    step = cfg.prune_step or max(1, width // 100)
    stamped = {"synthesised": (probe.stamp(probe.x_other), probe.k)}
    if probe.real_trigger is not None:
        real_others = probe.test_x[probe.test_y != probe.real_target]
        stamped["real"] = (probe.real_trigger(real_others), probe.real_target)
    curve, n = prune_curve(
        pruned,
        probe.test_x,
        probe.test_y,
        stamped,
        rank_neurons(gap_synth),
        stop_asr=cfg.prune_stop_asr,
        step=step,
        extend_share=cfg.prune_curve_share,
    )
    summary = {
        "neurons_pruned": n,
        "layer_width": width,
        "step": step,
        "stop_asr": cfg.prune_stop_asr,
        **probe.measure(pruned),
    }
    return pruned, curve, summary


def unlearn_triggers(
    model: Any,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    repair_triggers: list,
    probe: Probe,
    cfg: AuditConfig,
    progress: bool,
    repair_full: list = (),
) -> tuple[Any, dict]:
    """A copy of `model` fine-tuned to give clean images stamped with every kept trigger (masks,
    and full-image ones) their own label: (unlearned model, its summary)."""
    unlearned = copy.deepcopy(model)
    c, h, w = train_x.shape[1:]
    masks, patterns = (
        stack(repair_triggers) if repair_triggers else (np.zeros((0, h, w)), np.zeros((0, c, h, w)))
    )
    losses = unlearn(
        unlearned,
        train_x,
        train_y,
        torch.from_numpy(masks).float(),
        torch.from_numpy(patterns).float(),
        cfg.unlearn,
        progress,
        others=repair_full,
    )
    summary = {
        "config": cfg.unlearn.to_dict(),
        "triggers": len(repair_triggers) + len(repair_full),
        "loss": losses,
        **probe.measure(unlearned),
    }
    return unlearned, summary


def run_audit(
    model: Any,
    synth_x: torch.Tensor,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    cfg: AuditConfig,
    backdoor: dict | None = None,
    progress: bool = True,
) -> AuditResult:
    """Audit and repair `model` (an OnnxModule). synth_x: the small clean set (N, C, H, W) float
    in [0, 1]; train_x/train_y: clean training data for unlearning (uint8 or float); test_x/test_y:
    held-out evaluation data. backdoor: the manifest's `backdoor` entry of a demo set (the real
    target class and trigger), or None when unknown."""
    if cfg.repair not in ("flagged", "always", "never"):
        raise ValueError(f"unknown repair mode {cfg.repair!r}; allowed: flagged, always, never")
    seconds: dict[str, float] = {}

    # --- synthesis: one trigger per class; the anomalously small ones are flagged
    t = time.time()
    synth = synthesize(model, synth_x, num_classes, cfg.synth, progress=progress)
    seconds["synthesis"] = time.time() - t
    mask_flagged = flagged_classes(synth.l1, cfg.anomaly_threshold)
    summary = class_summary(synth, mask_flagged, cfg)
    t = time.time()
    families = {
        f: synthesize_family(f, model, synth_x, num_classes, cfg.family_synth, progress)
        for f in cfg.families
    }
    seconds["full_image_synthesis"] = time.time() - t
    summary["families"] = family_summaries(families, cfg)
    flagged = verdict(mask_flagged, summary["families"])
    summary["flagged"], summary["target_classes"] = bool(flagged), flagged
    real_target = None if backdoor is None else int(backdoor["target_class"])
    real_trigger = None if backdoor is None else Trigger(**backdoor["trigger"])
    if real_target is not None:
        summary["true_target_class"] = real_target
        summary["target_named_correctly"] = flagged[:1] == [real_target]

    # --- restarts: the class to identify and repair is the most anomalous flagged class, else
    # (for the report only) the smallest mask; a class the mask flagged has its trigger searched
    # again. A class only a full-image family flagged is repaired with that family's trigger.
    t = time.time()
    k = flagged[0] if flagged else int(np.argmin(synth.l1))
    by_mask = k in mask_flagged or not flagged
    restarts = cfg.restarts if k in mask_flagged else 0
    cands = candidates(model, synth_x, k, num_classes, synth, cfg.synth, restarts, progress)
    repair_triggers = kept(cands, cfg.keep_factor) if by_mask else []
    full = sorted(
        (f for f, fam in summary["families"].items() if k in fam["flagged"]),
        key=lambda f: -summary["families"][f]["per_class"][k]["anomaly_index"],
    )
    repair_full = [families[f].triggers[k] for f in full]
    seconds["restarts"] = time.time() - t
    h, w = test_x.shape[-2:]
    true_pixels = None if real_trigger is None else trigger_pixels(backdoor["trigger"], h, w)
    summary["restarts"] = restarts_summary(cands, repair_triggers, restarts, cfg, true_pixels)

    # --- identification: the smallest trigger found (the mask's, or the most anomalous full-
    # image family's) against the real one
    t = time.time()
    if by_mask:
        best = cands[0]
        stamp, mask = synth_stamp(best.mask, best.pattern), best.mask
        found = {"family": "mask", "start": best.start, "mask_l1": best.l1}
    else:
        stamp, mask = repair_full[0], None
        found = {"family": full[0], "size": repair_full[0].size}
    probe = Probe(test_x, test_y, k, stamp, test_x[test_y != k], real_target, real_trigger)
    summary["identification"], gap_synth = identification(
        model, synth_x, found, mask, probe, true_pixels, cfg
    )
    summary["clean_accuracy"] = accuracy(model, test_x, test_y)
    seconds["identification"] = time.time() - t

    result = AuditResult(
        summary, synth, cands, repair_triggers, families=families, repair_full=repair_full
    )
    if not (cfg.repair == "always" or (cfg.repair == "flagged" and flagged)):
        summary["repair"] = None
        summary["seconds"] = seconds
        return result

    # --- repair: pruning, then unlearning, each on its own copy of the model
    t = time.time()
    result.pruned, result.prune_curve, prune_summary = prune(model, probe, gap_synth, cfg)
    seconds["pruning"] = time.time() - t
    t = time.time()
    result.unlearned, unlearn_summary = unlearn_triggers(
        model, train_x, train_y, repair_triggers, probe, cfg, progress, repair_full
    )
    seconds["unlearning"] = time.time() - t
    summary["repair"] = {
        "class": k,
        "before": probe.measure(model),
        "pruning": prune_summary,
        "unlearning": unlearn_summary,
    }
    summary["seconds"] = seconds
    return result
