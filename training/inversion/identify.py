"""Trigger identification, the three ways of the paper (after Neural Cleanse): the synthesised
trigger's attack success; its visual similarity to the real trigger (IoU of the mask with the real
trigger's pixels, demo sets only); and the overlap of the penultimate neurons that the synthesised
and the real trigger excite."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from training.data.triggers import Trigger, patch_origin
from training.inversion.synthesis import apply_trigger


def trigger_pixels(trigger: dict, height: int, width: int) -> np.ndarray:
    """(H, W) bool: the pixels a patch trigger overwrites. A blend trigger touches every pixel."""
    t = Trigger(**trigger)
    if t.kind != "patch":
        return np.ones((height, width), bool)
    row, col = patch_origin(t.position, t.size, height, width)
    out = np.zeros((height, width), bool)
    out[row : row + t.size, col : col + t.size] = True
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool arrays (0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def mask_iou(mask: np.ndarray, true_pixels: np.ndarray, level: float = 0.5) -> dict[str, float]:
    """IoU of a synthesised mask (H, W) with the real trigger's pixels: binarised at `level`, and
    on the mask's top-k pixels with k = the real trigger's pixel count."""
    k = int(true_pixels.sum())
    top = np.zeros(mask.size, bool)
    top[np.argsort(-mask.ravel(), kind="stable")[:k]] = True
    return {
        "iou_at_0.5": iou(mask >= level, true_pixels),
        "iou_top_k": iou(top.reshape(mask.shape), true_pixels),
    }


@torch.no_grad()
def features(model: Any, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Penultimate activations (N, features) of x (N, C, H, W)."""
    return torch.cat(
        [model(x[i : i + batch_size], features=True)[1] for i in range(0, len(x), batch_size)]
    )


def activation_gap(model: Any, x: torch.Tensor, stamp) -> torch.Tensor:
    """Mean penultimate activation with the trigger minus without it, per neuron: (features,)."""
    return features(model, stamp(x)).mean(0) - features(model, x).mean(0)


def top_neurons(gap: torch.Tensor, share: float = 0.05) -> set[int]:
    k = max(1, int(round(share * len(gap))))
    return set(torch.argsort(gap, descending=True)[:k].tolist())


def neuron_overlap(gap_a: torch.Tensor, gap_b: torch.Tensor, share: float = 0.05) -> dict:
    """How far two triggers excite the same penultimate neurons: Jaccard overlap of the top
    `share` neurons by activation gap, and the cosine similarity of the gap vectors."""
    a, b = top_neurons(gap_a, share), top_neurons(gap_b, share)
    cos = float(torch.nn.functional.cosine_similarity(gap_a, gap_b, dim=0))
    return {
        "top_share": share,
        "top_k": len(a),
        "jaccard": len(a & b) / len(a | b),
        "shared": len(a & b),
        "cosine": cos,
    }


def synth_stamp(mask: np.ndarray, pattern: np.ndarray):
    m, p = torch.from_numpy(mask).float(), torch.from_numpy(pattern).float()
    return lambda x: apply_trigger(x, m, p)


@torch.no_grad()
def success(model: Any, x: torch.Tensor, stamp, target: int, batch_size: int = 500) -> float:
    """Attack success: share of x (images not of class `target`) classified as `target` once
    stamped."""
    hits = sum(
        int((model(stamp(x[i : i + batch_size])).argmax(1) == target).sum())
        for i in range(0, len(x), batch_size)
    )
    return hits / max(1, len(x))


@torch.no_grad()
def accuracy(model: Any, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    hits = sum(
        int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
        for i in range(0, len(x), batch_size)
    )
    return hits / max(1, len(x))
