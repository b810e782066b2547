"""The audit's data: which clean images synthesise the triggers, which tune the repair, which the
repair trains on, and which evaluate it. One split for `training.audit` and `training.audit.tune`,
so the tuning never sees the images the report is scored on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from training.data.datasets import load_dataset, split_train_val


@dataclass
class AuditSplit:
    synth: np.ndarray  # trigger synthesis (the small clean set)
    tune: np.ndarray  # choosing repair settings (training.audit.tune)
    pool: np.ndarray  # unlearning draws its clean and stamped images from here


def audit_split(n: int, manifest: dict, n_synth: int, seed: int, n_tune: int = 4000) -> AuditSplit:
    """Index arrays over n training images. For sets made by this pipeline the synthesis and tuning
    images come from the held-out validation split (never trained on) and the pool is the
    training split; for other sets all three are disjoint random draws."""
    val = manifest.get("training", {}).get("validation_split", {}).get("n")
    if val:
        pool, held = split_train_val(n, int(val), int(manifest["training"].get("seed", 0)))
    else:
        perm = np.random.default_rng(seed).permutation(n)
        held, pool = perm[: n_synth + n_tune], perm[n_synth + n_tune :]
    return AuditSplit(held[:n_synth], held[n_synth : n_synth + n_tune], pool)


@dataclass
class AuditData:
    synth_x: torch.Tensor  # float (N, C, H, W) in [0, 1]
    tune_x: torch.Tensor  # float
    tune_y: torch.Tensor
    train_x: torch.Tensor  # uint8, converted per batch
    train_y: torch.Tensor
    test_x: torch.Tensor  # float
    test_y: torch.Tensor
    classes: list[str]


def load_audit_data(
    dataset: str, data_dir: str | None, manifest: dict, n_synth: int, seed: int
) -> AuditData:
    train = load_dataset(dataset, "train", data_dir)
    test = load_dataset(dataset, "test", data_dir)
    split = audit_split(len(train), manifest, n_synth, seed)

    def floats(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(images).float().div_(255.0)

    return AuditData(
        synth_x=floats(train.images[split.synth]),
        tune_x=floats(train.images[split.tune]),
        tune_y=torch.from_numpy(train.labels[split.tune]),
        train_x=torch.from_numpy(train.images[split.pool]),
        train_y=torch.from_numpy(train.labels[split.pool]),
        test_x=floats(test.images),
        test_y=torch.from_numpy(test.labels),
        classes=list(manifest.get("classes") or train.classes),
    )
