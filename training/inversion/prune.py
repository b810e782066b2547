"""Repair by pruning: rank the penultimate neurons by their activation gap between clean inputs
and inputs with the synthesised trigger, zero them in that order (the `neuron_mask` hook of
OnnxModule), and stop once the synthesised trigger's attack success falls below `stop_asr`.
Features are computed once; each pruning step only re-runs the final layer."""

from __future__ import annotations

from typing import Any

import torch

from training.inversion.identify import features


@torch.no_grad()
def prune_curve(
    model: Any,
    clean_x: torch.Tensor,
    clean_y: torch.Tensor,
    stamped: dict[str, tuple[torch.Tensor, int]],
    order: torch.Tensor,
    stop_key: str = "synthesised",
    stop_asr: float = 0.01,
    step: int = 1,
    max_share: float = 0.9,
    extend_share: float = 0.0,
) -> tuple[list[dict], int]:
    """Prune neurons `order[:n]` for n = 0, step, 2*step, ... and record accuracy on
    (clean_x, clean_y) and attack success of each stamped set (images (N, C, H, W), target).
    Returns (curve, n at which stamped[stop_key]'s success fell below stop_asr, or the last n).
    The curve goes on past that n up to extend_share * width neurons (for the report only).
    The model's neuron_mask is left at the chosen n."""
    f_clean = features(model, clean_x)  # (N, features)
    f_stamped = {k: (features(model, x), t) for k, (x, t) in stamped.items()}
    width = len(model.neuron_mask)
    curve, chosen = [], None
    for n in range(0, int(max_share * width) + 1, step):
        mask = torch.ones(width)
        mask[order[:n]] = 0.0
        model.neuron_mask.copy_(mask)
        row = {
            "pruned": n,
            "accuracy": float((model.head(f_clean).argmax(1) == clean_y).float().mean()),
        }
        for k, (f, t) in f_stamped.items():
            row[f"asr_{k}"] = float((model.head(f).argmax(1) == t).float().mean())
        curve.append(row)
        if chosen is None and row[f"asr_{stop_key}"] < stop_asr:
            chosen = n
        if chosen is not None and n >= extend_share * width:
            break
    chosen = curve[-1]["pruned"] if chosen is None else chosen
    mask = torch.ones(width)
    mask[order[:chosen]] = 0.0
    model.neuron_mask.copy_(mask)
    return curve, chosen


def rank_neurons(gap: torch.Tensor) -> torch.Tensor:
    """Neuron indices by activation gap (triggered - clean), largest first."""
    return torch.argsort(gap, descending=True, stable=True)
