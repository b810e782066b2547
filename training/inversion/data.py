"""The audit's data: which clean images synthesise the triggers, which tune the repair, which the
repair trains on, and which evaluate it. One split for `training.audit` and `training.audit.tune`,
so the tuning never sees the images the report is scored on. A user's images without labels
(`training.audit --images DIR`) are labelled with the target's own classes."""

from __future__ import annotations

from collections.abc import Callable
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


def pseudo_labels(target: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
    """The target's own class of each uint8 image (N, C, H, W), in batches of 256: the labels of
    images that come without any."""
    out = []
    for start in range(0, len(images), 256):
        x = images[start : start + 256].astype(np.float32) / np.float32(255.0)
        out.append(np.asarray(target(x)).argmax(axis=1))
    return np.concatenate(out).astype(np.int64)


def unlabelled_audit_data(
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    n_synth: int,
    seed: int,
    test_share: float = 0.1,
    n_tune: int = 4000,
) -> AuditData:
    """The audit's splits of a user's unlabelled images (uint8 (N, C, H, W)), labelled with the
    target's own classes (:func:`pseudo_labels`): disjoint random draws for synthesis, tuning,
    evaluation (``test_share`` of the images) and the unlearning pool (the rest). On clean
    images the target's class is the true one as often as the target is accurate, so the repair
    learns to keep the target's answers; the report's clean accuracy is agreement with the
    target."""
    n = len(images)
    n_test = max(1, int(round(n * test_share)))
    n_tune = min(n_tune, max(0, n - n_synth - n_test) // 4)
    if n - n_synth - n_test - n_tune < n_synth:
        raise ValueError(
            f"{n} images are too few for the audit: {n_synth} synthesise the triggers, "
            f"{n_test} evaluate the repair, and the unlearning needs at least as many again; "
            "give more images or a smaller --synth-images"
        )
    perm = np.random.default_rng(seed).permutation(n)
    synth, test = perm[:n_synth], perm[n_synth : n_synth + n_test]
    tune, pool = (
        perm[n_synth + n_test : n_synth + n_test + n_tune],
        perm[n_synth + n_test + n_tune :],
    )

    def floats(idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(images[idx]).float().div_(255.0)

    return AuditData(
        synth_x=floats(synth),
        tune_x=floats(tune),
        tune_y=torch.from_numpy(labels[tune]),
        train_x=torch.from_numpy(images[pool]),
        train_y=torch.from_numpy(labels[pool]),
        test_x=floats(test),
        test_y=torch.from_numpy(labels[test]),
        classes=list(classes),
    )
