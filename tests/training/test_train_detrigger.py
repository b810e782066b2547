"""The train_detrigger command: bad or recipe-changing flags are refused before any data is read."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("corner_share=1.5", "--recipe corner_share must lie in [0, 1], got 1.5"),
        ("paper-share=-0.1", "--recipe paper_share must lie in [0, 1], got -0.1"),
        ("l2_weight=0", "--recipe l2_weight must be positive, got 0.0"),
        ("l2_weight=heavy", "--recipe l2_weight takes a float, got 'heavy'"),
        ("width", "--recipe 'width': give FIELD=VALUE"),
        ("depth=3", "--recipe depth: no such field; allowed: arch, batch_size"),
        ("families=extended", "--recipe families: set it with --families"),
        ("exclude=blend", "--recipe exclude: set it with --exclude"),
    ],
)
def test_a_bad_recipe_is_refused_before_any_data_is_read(tmp_path, value, message):
    """--recipe fails fast on a bad field or value, naming it (were it let through, the run
    would go on to load MNIST and train)."""
    run = subprocess.run(
        [sys.executable, "-m", "training.train_detrigger", "--dataset", "mnist"]
        + ["--recipe", value, "--data-dir", str(tmp_path), "--run-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert message in run.stderr


def test_a_changed_recipe_in_the_preset_run_dir_is_refused(tmp_path):
    """Recipe flags do not rename the checkpoint: in the default run dir a changed recipe would
    overwrite the preset AE's checkpoint (the one reproduce and swap_detrigger reload)."""
    run = subprocess.run(
        [sys.executable, "-m", "training.train_detrigger", "--dataset", "mnist"]
        + ["--recipe", "l2_weight=30", "--recipe", "corner_share=0.25"]
        + ["--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path.parent,  # nothing of the repo's runs/ is in reach
    )
    assert run.returncode == 2
    assert "--recipe l2_weight changes the preset's conv_random AE" in run.stderr  # 0.25 is its
    assert "runs/mnist/detrigger_conv_random.ckpt would be replaced" in run.stderr


def test_a_changed_width_in_the_preset_run_dir_is_refused(tmp_path):
    """A width changes the net but not the checkpoint's name: another --run-dir is needed."""
    run = subprocess.run(
        [sys.executable, "-m", "training.train_detrigger", "--dataset", "mnist"]
        + ["--arch", "slim", "--recipe", "width=8", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path.parent,
    )
    assert run.returncode == 2
    assert "--recipe width changes the preset's slim_random AE" in run.stderr
