"""The audit as one function over tensors: synthesise -> detect -> identify -> prune -> unlearn.
No files, no datasets: the CLI (`training.audit.__main__`) and the tests both call `run_audit`."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from training.audit.anomaly import anomaly_index, flagged_classes
from training.audit.identify import (
    accuracy,
    activation_gap,
    mask_iou,
    neuron_overlap,
    success,
    synth_stamp,
    trigger_pixels,
)
from training.audit.prune import prune_curve, rank_neurons
from training.audit.restarts import candidates, kept, stack
from training.audit.synthesis import SynthConfig, SynthResult, synthesize
from training.audit.unlearn import UnlearnConfig, unlearn
from training.data.triggers import Trigger


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
    restarts: int = 5  # new searches for the candidate class's trigger (training.audit.restarts)
    keep_factor: float = 2.0  # unlearn every reached trigger up to this times the smallest L1


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
    seconds: dict[str, float] = {}
    t = time.time()
    synth = synthesize(model, synth_x, num_classes, cfg.synth, progress=progress)
    seconds["synthesis"] = time.time() - t
    index = anomaly_index(synth.l1)
    flagged = flagged_classes(synth.l1, cfg.anomaly_threshold)
    summary: dict = {
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
            for k in range(num_classes)
        ],
    }
    real_target = None if backdoor is None else int(backdoor["target_class"])
    real_trigger = None if backdoor is None else Trigger(**backdoor["trigger"])
    if real_target is not None:
        summary["true_target_class"] = real_target
        summary["target_named_correctly"] = flagged[:1] == [real_target]
    # The class to identify and repair: the most anomalous flagged class, else (for the report
    # only) the smallest mask. A flagged class's trigger is searched again from other starts.
    t = time.time()
    k = flagged[0] if flagged else int(np.argmin(synth.l1))
    restarts = cfg.restarts if flagged else 0
    cands = candidates(model, synth_x, k, num_classes, synth, cfg.synth, restarts, progress)
    repair_triggers = kept(cands, cfg.keep_factor)
    seconds["restarts"] = time.time() - t
    best = cands[0]
    h, w = test_x.shape[-2:]
    true_pixels = None if real_trigger is None else trigger_pixels(backdoor["trigger"], h, w)
    summary["restarts"] = {
        "count": restarts,
        "keep_factor": cfg.keep_factor,
        "candidates": [
            {
                "start": c.start,
                "mask_l1": c.l1,
                "synth_asr_clean_set": c.asr,
                "reached_asr_target": c.reached,
                "kept": c in repair_triggers,
                **({} if true_pixels is None else mask_iou(c.mask, true_pixels)),
            }
            for c in cands
        ],
    }
    t = time.time()
    stamp = synth_stamp(best.mask, best.pattern)
    others = test_y != k
    x_other = test_x[others]  # test images whose true class is not the candidate target
    ident: dict = {
        "class": k,
        "start": best.start,
        "synth_asr_test": success(model, x_other, stamp, k),
        "mask_l1": best.l1,
    }
    gap_synth = activation_gap(model, synth_x, stamp)
    if real_trigger is not None and real_target is not None and true_pixels is not None:
        ident.update(mask_iou(best.mask, true_pixels))
        gap_real = activation_gap(model, synth_x, real_trigger)
        ident["neuron_overlap"] = neuron_overlap(gap_synth, gap_real, cfg.overlap_share)
        ident["real_asr_test"] = success(
            model, test_x[test_y != real_target], real_trigger, real_target
        )
    summary["identification"] = ident
    summary["clean_accuracy"] = accuracy(model, test_x, test_y)
    seconds["identification"] = time.time() - t

    result = AuditResult(summary, synth, cands, repair_triggers)
    do_repair = cfg.repair == "always" or (cfg.repair == "flagged" and flagged)
    if cfg.repair not in ("flagged", "always", "never"):
        raise ValueError(f"unknown repair mode {cfg.repair!r}; allowed: flagged, always, never")
    if not do_repair:
        summary["repair"] = None
        summary["seconds"] = seconds
        return result

    def evaluate(m: Any) -> dict:
        out = {
            "clean_accuracy": accuracy(m, test_x, test_y),
            "synth_asr": success(m, x_other, stamp, k),
        }
        if real_trigger is not None:
            others = test_x[test_y != real_target]
            out["real_asr"] = success(m, others, real_trigger, real_target)
            # The floor of real_asr: clean images of other classes the model already sends to the
            # target class without any trigger (class confusion, e.g. shirt / T-shirt).
            out["clean_to_target"] = success(m, others, lambda v: v, real_target)
        return out

    # --- pruning
    t = time.time()
    pruned = copy.deepcopy(model)
    width = len(pruned.neuron_mask)
    step = cfg.prune_step or max(1, width // 100)
    stamped = {"synthesised": (stamp(x_other), k)}
    if real_trigger is not None:
        stamped["real"] = (real_trigger(test_x[test_y != real_target]), real_target)
    curve, n = prune_curve(
        pruned,
        test_x,
        test_y,
        stamped,
        rank_neurons(gap_synth),
        stop_asr=cfg.prune_stop_asr,
        step=step,
        extend_share=cfg.prune_curve_share,
    )
    result.pruned, result.prune_curve = pruned, curve
    prune_summary = {
        "neurons_pruned": n,
        "layer_width": width,
        "step": step,
        "stop_asr": cfg.prune_stop_asr,
        **evaluate(pruned),
    }
    seconds["pruning"] = time.time() - t

    # --- unlearning
    t = time.time()
    unlearned = copy.deepcopy(model)
    losses = unlearn(
        unlearned,
        train_x,
        train_y,
        *(torch.from_numpy(a).float() for a in stack(repair_triggers)),
        cfg.unlearn,
        progress,
    )
    result.unlearned = unlearned
    unlearn_summary = {
        "config": cfg.unlearn.to_dict(),
        "triggers": len(repair_triggers),
        "loss": losses,
        **evaluate(unlearned),
    }
    seconds["unlearning"] = time.time() - t
    summary["repair"] = {
        "class": k,
        "before": evaluate(model),
        "pruning": prune_summary,
        "unlearning": unlearn_summary,
    }
    summary["seconds"] = seconds
    return result
