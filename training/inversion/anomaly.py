"""Detection: the anomaly index of each class's mask L1 norm, from the median absolute deviation
(Neural Cleanse). A class is flagged when its norm is abnormally SMALL: index > threshold (2)."""

from __future__ import annotations

import numpy as np

MAD_CONSISTENCY = 1.4826  # makes the MAD a consistent estimator of the std for normal data


def anomaly_index(norms: np.ndarray, log: bool = False, min_mad: float = 0.0) -> np.ndarray:
    """(median - norm) / (1.4826 * MAD) per class: positive on the small side. norms (K,) > 0;
    `log`: of log(norm), for sizes on a ratio scale (a blend weight, a displacement). min_mad:
    the MAD's floor, differences below which count as noise (classes whose sizes all lie within
    a few percent would otherwise make a few percent look anomalous)."""
    norms = np.asarray(norms, dtype=np.float64)
    if log:
        norms = np.log(np.maximum(norms, 1e-12))
    med = np.median(norms)
    mad = MAD_CONSISTENCY * max(float(np.median(np.abs(norms - med))), min_mad)
    if mad == 0:  # all (or most) norms equal: nothing stands out
        return np.zeros_like(norms)
    return (med - norms) / mad


def flagged_classes(norms: np.ndarray, threshold: float = 2.0) -> list[int]:
    """Classes whose small-side anomaly index exceeds `threshold`, most anomalous first."""
    return flagged_by_index(anomaly_index(norms), threshold)


def flagged_by_index(idx: np.ndarray, threshold: float) -> list[int]:
    """Classes whose anomaly index exceeds `threshold`, most anomalous first."""
    hits = np.flatnonzero(idx > threshold)
    return [int(i) for i in hits[np.argsort(-idx[hits])]]
