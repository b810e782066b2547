"""Detection: the anomaly index of each class's mask L1 norm, from the median absolute deviation
(Neural Cleanse). A class is flagged when its norm is abnormally SMALL: index > threshold (2)."""

from __future__ import annotations

import numpy as np

MAD_CONSISTENCY = 1.4826  # makes the MAD a consistent estimator of the std for normal data


def anomaly_index(norms: np.ndarray) -> np.ndarray:
    """(median - norm) / (1.4826 * MAD) per class: positive on the small side. norms (K,)."""
    norms = np.asarray(norms, dtype=np.float64)
    med = np.median(norms)
    mad = MAD_CONSISTENCY * np.median(np.abs(norms - med))
    if mad == 0:  # all (or most) norms equal: nothing stands out
        return np.zeros_like(norms)
    return (med - norms) / mad


def flagged_classes(norms: np.ndarray, threshold: float = 2.0) -> list[int]:
    """Classes whose small-side anomaly index exceeds `threshold`, most anomalous first."""
    idx = anomaly_index(norms)
    hits = np.flatnonzero(idx > threshold)
    return [int(i) for i in hits[np.argsort(-idx[hits])]]
