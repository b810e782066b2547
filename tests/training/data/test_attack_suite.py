"""The attack-suite file: parsing, errors that name the field, and that every shipped attack can
be learnt (a tiny net on generated data picks up each backdoor)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.support.tiny_backdoor import fit
from training.config import TargetConfig, backdoors
from training.data.attack_suite import (
    DEFAULT_SUITE,
    SuiteError,
    load_suite,
    parse_suite,
    select,
)
from training.data.triggers import Trigger, poison_dataset_multi
from training.suite import attack_config

GOOD = {
    "poison_rate": 0.1,
    "attacks": [
        {
            "name": "white",
            "backdoors": [{"target_class": 0, "trigger": {"kind": "patch", "size": 3}}],
        },
        {
            "name": "pair",
            "poison_rate": 0.2,
            "backdoors": [
                {"target_class": 1, "trigger": {"kind": "blend", "alpha": 0.2, "seed": 1}},
                {
                    "target_class": 2,
                    "trigger": {"kind": "patch", "position": [3, 4], "content": "binary"},
                },
            ],
        },
    ],
}


def test_shipped_suite_has_the_attacks_of_the_issues():
    attacks = load_suite()
    assert list(attacks) == [
        "badnets-white",
        "checkerboard",
        "random-colour-patch",
        "blend",
        "noise",
        "warp",
        "vignette",
        "frequency",
        "dynamic",
        "edge-patch",
        "two-targets",
        "sig",
    ]
    # 10% of the training set per trigger: the two-target attack poisons 20%, 10% per pair
    assert all(a.poison_rate == 0.1 * len(a.backdoors) for a in attacks.values())
    assert attacks["badnets-white"].backdoors == ((Trigger(), 0),)
    assert attacks["blend"].backdoors[0][0].alpha == 0.1
    assert len(attacks["two-targets"].backdoors) == 2
    targets = [k for a in attacks.values() for _, k in a.backdoors]
    # Targets spread over the classes: every one of the 10 classes is some pair's target, so
    # that no detector can key on one class (13 pairs: some classes are shared).
    assert set(targets) == set(range(10))
    for h, w in ((28, 28), (32, 32)):  # MNIST / Fashion-MNIST and CIFAR-10 sizes
        for a in attacks.values():
            r = a.resolved(h, w, 10)
            for t, _ in r.backdoors:
                assert t.position != "random"
                json.dumps(t.to_dict())
    (row, col), size = (
        attacks["random-colour-patch"].resolved(28, 28, 10).backdoors[0][0].position,
        5,
    )
    assert size <= row <= 28 - 2 * size and size <= col <= 28 - 2 * size  # away from the corners


def test_parse_good_suite_and_select():
    attacks = parse_suite(copy.deepcopy(GOOD))
    assert attacks["white"].poison_rate == 0.1 and attacks["pair"].poison_rate == 0.2
    assert attacks["pair"].backdoors[1][0].position == (3, 4)
    assert [a.name for a in select(attacks, "pair")] == ["pair"]
    assert len(select(attacks, "")) == 2
    with pytest.raises(SuiteError, match="unknown attack.*nope; allowed: white, pair"):
        select(attacks, "white,nope")


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda d: d["attacks"][1]["backdoors"][1]["trigger"].update(sise=3),
            r"suite: attacks\[1\] \(pair\)\.backdoors\[1\]\.trigger: unknown field 'sise'; "
            "allowed: kind, size",
        ),
        (
            lambda d: d["attacks"][0]["backdoors"][0]["trigger"].update(kind="wobble"),
            r"attacks\[0\] \(white\)\.backdoors\[0\]\.trigger: unknown trigger kind 'wobble'",
        ),
        (
            lambda d: d["attacks"][0]["backdoors"][0]["trigger"].update(size="4"),
            r"backdoors\[0\]\.trigger\.size: expected int, got '4'",
        ),
        (
            lambda d: d["attacks"][1]["backdoors"][0].update(target_class=-1),
            r"attacks\[1\] \(pair\)\.backdoors\[0\]\.target_class: expected a class index",
        ),
        (
            lambda d: d["attacks"][1].update(poison_rate=1.5),
            r"attacks\[1\] \(pair\)\.poison_rate: poison_rate must be a number in \(0, 1\]",
        ),
        (lambda d: d["attacks"][1].update(name="white"), r"attacks\[1\]\.name: 'white' is used"),
        (lambda d: d["attacks"][0].update(name="Big Name"), r"attacks\[0\]\.name: 'Big Name'"),
        (lambda d: d["attacks"][0].pop("backdoors"), r"attacks\[0\]: missing field 'backdoors'"),
        (lambda d: d["attacks"][0].update(backdoors=[]), r"backdoors: must be a non-empty list"),
        (lambda d: d.update(atacks=[]), r"suite: unknown field 'atacks'"),
    ],
)
def test_bad_suite_errors_name_the_field(edit, message):
    data = copy.deepcopy(GOOD)
    edit(data)
    with pytest.raises(SuiteError, match=message):
        parse_suite(data)


def test_load_suite_names_the_file_and_resolve_checks_the_dataset(tmp_path: Path):
    path = tmp_path / "mine.json"
    path.write_text("{not json")
    with pytest.raises(SuiteError, match="mine.json: not valid JSON"):
        load_suite(path)
    bad = copy.deepcopy(GOOD)
    bad["attacks"][0]["backdoors"][0]["trigger"]["sise"] = 3
    path.write_text(json.dumps(bad))
    with pytest.raises(SuiteError, match=r"^mine.json: attacks\[0\] \(white\)"):
        load_suite(path)
    attacks = parse_suite(copy.deepcopy(GOOD))
    with pytest.raises(SuiteError, match="target_class 2 is not a class of a 2-class dataset"):
        attacks["pair"].resolved(28, 28, 2)
    with pytest.raises(SuiteError, match=r"'pair', backdoors\[1\]\.trigger: .*does not fit"):
        attacks["pair"].resolved(6, 6, 10)


def test_attack_config_single_and_multi_target():
    attacks = load_suite()
    base = TargetConfig()
    single = attack_config(base, attacks["checkerboard"].resolved(28, 28, 10))
    assert single.attack is None and single.target_class == 1
    assert single.trigger == {
        "kind": "patch",
        "size": 4,
        "position": "bottom-right",
        "content": "checkerboard",
    }
    multi = attack_config(base, attacks["two-targets"].resolved(28, 28, 10))
    assert [k for _, k in backdoors(multi)] == [5, 6] and multi.target_class == 5
    tuned = attack_config(base, attacks["blend"], init_from="runs/x.ckpt")
    assert tuned.init_from == "runs/x.ckpt" and tuned.epochs == 2 and tuned.lr == base.lr / 10
    assert base == TargetConfig()  # the preset is not changed


SIDE, CLASSES = 16, 10


def _bars(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 1, 16, 16) float images: dim noise and one bright bar at row 3 + class, columns 4..11,
    away from every corner (where several suite triggers go)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = rng.uniform(0.0, 0.2, (n, 1, SIDE, SIDE)).astype(np.float32)
    x[np.arange(n), 0, 3 + y, 4:12] = rng.uniform(0.7, 1.0, n)[:, None]
    return x, y.astype(np.int64)


def _train(x: np.ndarray, y: np.ndarray, epochs: int = 10) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (N, 8, 8, 8)
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 32),
        nn.ReLU(),
        nn.Linear(32, CLASSES),
    )
    return fit(net, x, y, epochs)


@pytest.mark.parametrize("name", list(load_suite(DEFAULT_SUITE)))
def test_a_tiny_net_learns_each_shipped_attack(name):
    # The suite's own triggers (resolved for 16x16 images) poison tiny generated data; the net
    # keeps its clean accuracy and every pair's trigger sends other classes to its target. (The
    # faint noise trigger is the slowest to learn: about 8 epochs here.)
    attack = load_suite()[name].resolved(SIDE, SIDE, CLASSES)
    x, y = _bars(2000, seed=0)
    px, py, _ = poison_dataset_multi(
        x, y, attack.poison_rate, list(attack.backdoors), np.random.default_rng(0)
    )
    net = _train(px, py)
    tx, ty = _bars(500, seed=1)
    with torch.no_grad():
        assert (net(torch.from_numpy(tx)).argmax(1).numpy() == ty).mean() > 0.95
        for trigger, k in attack.backdoors:
            keep = ty != k
            pred = net(trigger(torch.from_numpy(tx[keep]))).argmax(1).numpy()
            assert (pred == k).mean() > 0.9, f"{name}: trigger of class {k} not learnt"
