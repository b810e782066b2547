"""Images that the de-trigger AE returns unchanged, whose second target pass is skipped
(issue 20; docs/model-contract.md, "Unchanged images").

The de-trigger detector compares the target on x with the target on AE(x). Where AE(x) is x
bit for bit, the second pass would see the first pass's very input, so the guard reuses the
first pass's logits for that row instead of running the target again: the row's scores are
exactly those of identical logits (no class change, a KL divergence and a probability drop of
0), which is what the second pass would have given. Nothing is approximated here: only rows
that compare equal element by element are skipped (a NaN never equals itself, so a row with
one is always run).

An AE of continuous outputs almost never returns its input bit for bit. A set's AE graph may
therefore end in a gate (training/nets/gate.py) that returns x itself wherever AE(x) is
within a tolerance of x in every pixel; the tolerance is part of the detector, measured and
calibrated with it, and recorded in the manifest (``detrigger.unchanged_tolerance``).
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, helper


def changed_rows(x: np.ndarray, x_ae: np.ndarray) -> np.ndarray:
    """(N,) bool: True where AE(x) differs from x in any element (NaN counts as different)."""
    n = x.shape[0]
    return ~np.equal(x_ae, x).reshape(n, -1).all(axis=1)


def largest_change(x: np.ndarray, x_ae: np.ndarray) -> np.ndarray:
    """(N,) max |AE(x) - x| over each image: 0 for an unchanged one; what a gate compares with
    its tolerance (NaN where AE(x) has one)."""
    with np.errstate(invalid="ignore"):
        return np.abs(x_ae - x).reshape(x.shape[0], -1).max(axis=1)


def second_pass(x: np.ndarray, x_ae: np.ndarray, changed: np.ndarray) -> np.ndarray:
    """The batch the target runs on: x, then the changed rows of AE(x), (N + M, C, H, W)."""
    if changed.all():
        return np.concatenate([x, x_ae])
    return np.concatenate([x, x_ae[changed]])


def pair_rows(changed: np.ndarray) -> np.ndarray:
    """(2N,) rows into the target's answer on :func:`second_pass`'s batch that give the answer
    on the full pair [x; AE(x)]: row i is x_i's, row N + i is AE(x_i)'s, which for an unchanged
    image is x_i's own row."""
    n = len(changed)
    first = np.arange(n)
    second = first.copy()
    second[changed] = n + np.arange(int(changed.sum()))
    return np.concatenate([first, second])


def reduce_per_image(
    op: str, source: str, output: str, rank: int, opset: int, name: str
) -> list[NodeProto]:
    """Nodes that reduce ``source`` (N, ...) of ``rank`` dimensions to (N, 1, ..., 1) with the
    ONNX reduction ``op`` (e.g. "ReduceMax"), in the form of the graph's ai.onnx ``opset``
    (axes an attribute before opset 18, ReduceSum's before 13; an input from then on)."""
    axes = list(range(1, rank))
    if opset < (13 if op == "ReduceSum" else 18):
        return [helper.make_node(op, [source], [output], axes=axes, keepdims=1, name=name)]
    axes_name = f"{name}_axes"
    return [
        helper.make_node(
            "Constant",
            [],
            [axes_name],
            value=helper.make_tensor(axes_name, 7, [len(axes)], axes),  # 7: INT64
            name=f"{name}_axes_constant",
        ),
        helper.make_node(op, [source, axes_name], [output], keepdims=1, name=name),
    ]
