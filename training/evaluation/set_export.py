"""Write a model set (docs/model-contract.md) from a trained (target, de-trigger AE) pair: both
graphs exported with the parity check, demo samples, the chosen decision re-run with ONNX Runtime
over the full test set (as the service runs it) against torch's flags, and the manifest.

Shared by `training.reproduce` (the shipped sets) and `training.suite` (the attack suite). A set
made with several (trigger, target class) pairs stamps its triggered samples with the pairs in
turn and counts a triggered test image as a positive of its pair when its label is not that
pair's target.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.data.triggers import Trigger, stamp_pairs
from training.evaluation.detection import decide
from training.nets.export import export_and_check, onnx_logits_pair, write_samples

N_SAMPLES = 8

# (f(x), f(AE(x))) on the clean test set, then on the triggered test set: evaluate_pair's
# raw["logits"], float64 (N, classes) each.
Logits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def backdoor_entry(pairs: list[tuple[Trigger, int]], poison_rate: float) -> dict:
    """The manifest's `backdoor`: {target_class, poison_rate, trigger} of the first pair, and for
    several pairs also `attacks`, every pair as {target_class, trigger}."""
    trigger, target_class = pairs[0]
    entry: dict = {
        "target_class": target_class,
        "poison_rate": poison_rate,
        "trigger": trigger.to_dict(),
    }
    if len(pairs) > 1:
        entry["attacks"] = [{"target_class": k, "trigger": t.to_dict()} for t, k in pairs]
    return entry


def evaluation_entry(r: dict, decision: dict, target_fpr: float) -> dict:
    """The manifest's headline numbers of one pair from evaluate_pair's results, under the
    decision the set ships with."""
    key = (
        "class_change"
        if decision["rule"] == "class_change"
        else f"{decision['score']}@fpr{target_fpr:g}"
    )
    scores = r["scores"][decision["score"]]
    return {
        "clean_accuracy": r["clean_accuracy"],
        "clean_accuracy_after_ae": r["clean_accuracy_after_ae"],
        "attack_success_rate": r["attack_success_rate"],
        "detection_rate": r["test"][key]["detection_rate"],
        "false_positive_rate": r["test"][key]["false_positive_rate"],
        "backdoor_accuracy_after_ae": r["backdoor_accuracy_after_ae"],
        "auroc": scores["auroc"],
        "tpr_at_fpr0.01": scores["tpr_at_fpr0.01"],
        "tpr_at_fpr0.05": scores["tpr_at_fpr0.05"],
        "n_test": r["n_test"],
        "n_positive": r["n_positive"],
    }


def set_evaluation(
    pairs: list[tuple[Trigger, int]],
    results: list[dict],
    decision: dict,
    target_fpr: float,
    onnx_runtime: dict,
    report: str,
) -> dict:
    """The manifest's `evaluation`: the first pair's evaluation_entry, the ONNX Runtime check and
    the report's path; for several pairs also `attacks`, every pair's entry with its target."""
    entries = [evaluation_entry(r, decision, target_fpr) for r in results]
    evaluation = {**entries[0], "onnx_runtime": onnx_runtime}
    if len(pairs) > 1:
        evaluation["attacks"] = [
            {"target_class": k, **e} for (_, k), e in zip(pairs, entries, strict=True)
        ]
    evaluation["report"] = report
    return evaluation


def sample_index(test_y: np.ndarray, pairs: list[tuple[Trigger, int]]) -> np.ndarray:
    """The first N_SAMPLES test images whose label is none of the target classes."""
    targets = [k for _, k in pairs]
    return np.flatnonzero(~np.isin(test_y, targets))[:N_SAMPLES]


def triggered_samples(x: torch.Tensor, pairs: list[tuple[Trigger, int]]) -> torch.Tensor:
    """Sample i (of x, (n, C, H, W)) stamped with the trigger of pair i mod K."""
    which = torch.arange(len(x)) % len(pairs)
    return stamp_pairs(x, which, [t for t, _ in pairs])


def export_model_set(
    out: Path,
    target: nn.Module,
    ae: nn.Module,
    test_x: torch.Tensor,
    test_y: np.ndarray,
    pairs: list[tuple[Trigger, int]],
    decision: dict,
    logits: list[Logits],
) -> dict:
    """Write target.onnx, detrigger.onnx (parity-checked) and samples/ into `out`. test_x: float
    test images (N, C, H, W) in [0, 1]; logits: per pair, from evaluate_pair. Returns the
    manifest pieces {"target", "detrigger", "samples", "onnx_runtime"}."""
    out.mkdir(parents=True, exist_ok=True)
    check_batch = parity_batch(test_x, pairs)
    target_entry = export_and_check(target, check_batch, out / "target.onnx", "images", "logits")
    ae_entry = export_and_check(ae, check_batch, out / "detrigger.onnx", "images", "images_out")
    idx = sample_index(test_y, pairs)
    write_samples(
        out / "samples",
        test_x[idx].numpy(),
        triggered_samples(test_x[idx], pairs).numpy(),
        test_y[idx],
    )
    return {
        "target": target_entry,
        "detrigger": ae_entry,
        **decision_checks(out, test_x, test_y, pairs, decision, logits),
    }


def parity_batch(test_x: torch.Tensor, pairs: list[tuple[Trigger, int]]) -> torch.Tensor:
    """The images an export is parity-checked on: 16 clean test images, then the same stamped
    with each pair's trigger."""
    return torch.cat([test_x[:16], *(t(test_x[:16]) for t, _ in pairs)])


def decision_checks(
    out: Path,
    test_x: torch.Tensor,
    test_y: np.ndarray,
    pairs: list[tuple[Trigger, int]],
    decision: dict,
    logits: list[Logits],
) -> dict:
    """The manifest's `samples` (what the decision does to each demo sample) and `onnx_runtime`:
    the decision recomputed with ONNX Runtime on out/target.onnx and out/detrigger.onnx over the
    full test set, as the service runs it, against the flags from torch's `logits`."""
    rule, score_name, threshold = decision["rule"], decision["score"], decision["threshold"]
    idx = sample_index(test_y, pairs)
    lx_c, lae_c = logits[0][0], logits[0][1]
    lx_t = np.stack([logits[i % len(pairs)][2][j] for i, j in enumerate(idx)])
    lae_t = np.stack([logits[i % len(pairs)][3][j] for i, j in enumerate(idx)])
    samples = []
    for kind, lx, lae in (("clean", lx_c[idx], lae_c[idx]), ("triggered", lx_t, lae_t)):
        flags = decide(rule, lx, lae, score_name, threshold)
        for i, j in enumerate(idx):
            samples.append(
                {
                    "file": f"samples/{kind}_{i:02d}_label{int(test_y[j])}.png",
                    "kind": kind,
                    "label": int(test_y[j]),
                    "test_index": int(j),
                    "predicted": int(lx[i].argmax()),
                    "predicted_after_ae": int(lae[i].argmax()),
                    "flagged": bool(flags[i]),
                }
            )

    # (ONNX flags, torch flags, max |logit diff|) on the clean images, then per pair on its
    # positives.
    runs = [("clean", test_x, logits[0][0], logits[0][1], np.ones(len(test_y), bool))]
    for (trigger, k), (_, _, lx, lae) in zip(pairs, logits, strict=True):
        runs.append(("triggered", trigger(test_x), lx, lae, test_y != k))
    checked: dict[str, list] = {"clean": [], "triggered": []}
    for kind, imgs, lx, lae, sel in runs:
        olx, olae = onnx_logits_pair(out / "target.onnx", out / "detrigger.onnx", imgs.numpy())
        f_onnx = decide(rule, olx, olae, score_name, threshold)
        f_torch = decide(rule, lx, lae, score_name, threshold)
        checked[kind].append((f_onnx[sel], f_torch[sel], float(np.abs(olx - lx).max())))
    flags_onnx = {k: np.concatenate([c[0] for c in v]) for k, v in checked.items()}
    every = checked["clean"] + checked["triggered"]
    onnx_runtime = {
        "detection_rate": float(flags_onnx["triggered"].mean()),
        "false_positive_rate": float(flags_onnx["clean"].mean()),
        "flag_agreement_with_torch": float(np.mean(np.concatenate([a == b for a, b, _ in every]))),
        "max_abs_logit_diff": max(d for _, _, d in every),
    }
    return {"samples": samples, "onnx_runtime": onnx_runtime}


def manifest(
    name: str,
    description: str,
    image_shape: tuple[int, ...],
    classes: list[str],
    exported: dict,
    target_arch: str,
    ae_arch: str,
    decision: dict,
    backdoor: dict,
    evaluation: dict,
    training: dict,
    versions: dict,
) -> dict:
    """The manifest of docs/model-contract.md. image_shape: (C, H, W); exported: what
    export_model_set returned."""
    c, h, w = (int(v) for v in image_shape)
    return {
        "format_version": 1,
        "name": name,
        "description": description,
        "input": {"height": h, "width": w, "channels": c},
        "classes": list(classes),
        "target": {**exported["target"], "architecture": target_arch},
        "detrigger": {**exported["detrigger"], "architecture": ae_arch},
        "decision": decision,
        "backdoor": backdoor,
        "evaluation": evaluation,
        "samples": exported["samples"],
        "training": training,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": versions,
    }
