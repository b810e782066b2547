"""Unchanged images (contract/unchanged.py): which rows the target runs twice, and how its
answer on them maps back to the full pair [x; AE(x)]."""

import numpy as np

from contract.unchanged import changed_rows, largest_change, pair_rows, second_pass


def test_only_bit_identical_rows_are_unchanged_and_nan_is_always_changed() -> None:
    x = np.zeros((4, 1, 2, 2), np.float32)
    x_ae = x.copy()
    x_ae[1, 0, 1, 1] = np.float32(1e-7)  # one element, barely moved
    x_ae[2, 0, 0, 0] = np.nan
    x[3, 0, 0, 0] = np.nan  # NaN in, NaN out: NaN never equals itself
    x_ae[3, 0, 0, 0] = np.nan
    assert changed_rows(x, x_ae).tolist() == [False, True, True, True]


def test_the_second_pass_holds_x_then_only_the_changed_rows() -> None:
    x = np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1)
    x_ae = x + np.array([0, 10, 0, 10], np.float32).reshape(4, 1, 1, 1)
    changed = changed_rows(x, x_ae)
    batch = second_pass(x, x_ae, changed)
    assert batch.ravel().tolist() == [0, 1, 2, 3, 11, 13]
    # The target's answer on that batch, back on the pair: row 4 + i is AE(x_i)'s.
    rows = pair_rows(changed)
    assert rows.tolist() == [0, 1, 2, 3, 0, 4, 2, 5]
    logits = batch.reshape(-1, 1)  # a target that returns its input
    pair = np.concatenate([x, x_ae]).reshape(-1, 1)
    assert np.array_equal(logits[rows], pair)


def test_every_row_changed_is_the_plain_pair() -> None:
    x = np.zeros((3, 1, 1, 1), np.float32)
    changed = np.ones(3, bool)
    assert second_pass(x, x + 1, changed).shape == (6, 1, 1, 1)
    assert pair_rows(changed).tolist() == [0, 1, 2, 3, 4, 5]
    assert pair_rows(np.zeros(0, bool)).tolist() == []


def test_largest_change_is_per_image_and_keeps_nan() -> None:
    x = np.zeros((3, 1, 2, 2), np.float32)
    x_ae = x.copy()
    x_ae[1, 0, 0, 1] = -0.25
    x_ae[2, 0, 1, 0] = np.nan
    got = largest_change(x, x_ae)
    assert got[:2].tolist() == [0.0, 0.25] and np.isnan(got[2])
