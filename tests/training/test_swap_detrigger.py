"""training.swap_detrigger on a tiny generated set: another AE goes in, the target stays byte for
byte, and the new numbers are the ones `make reproduce` measures for that AE on that target."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.runtime.modelset import ModelSet
from service.settings import Settings
from training import reproduce, swap_detrigger
from training.evaluation import report as rep
from training.nets.manifest_file import sha256


@pytest.fixture
def tiny_set(tiny_preset, tmp_path):
    """A reproduced tiny MNIST set shipping the conv AE, and reproduce's report of both AEs."""
    report = reproduce.run_dataset("mnist", tiny_preset)
    return tmp_path / "models" / "mnist", report


def swap_args(tiny_preset, folder, *extra: str) -> list[str]:
    return [
        "--model-set",
        str(folder),
        "--data-dir",
        tiny_preset.data_dir,
        "--run-dir",
        tiny_preset.run_dir,
        "--reports-dir",
        tiny_preset.reports_dir,
        "--threads",
        "1",
        *extra,
    ]


def test_swap_puts_the_ae_in_and_keeps_the_target(tiny_preset, tiny_set, tmp_path):
    folder, reproduced = tiny_set
    # A set that carries detector detrigger_or_repaired (as the shipped ones do): its de-trigger
    # threshold, like both's, belongs to the AE.
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["detectors"]["detrigger_or_repaired"] = {"score": "prob_drop", "threshold": 0.05}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    before = json.loads((folder / "manifest.json").read_text())
    target_bytes = (folder / "target.onnx").read_bytes()
    out = tmp_path / "reports" / "mnist" / "detrigger_swap.json"

    report = swap_detrigger.main(swap_args(tiny_preset, folder, "--ae", "mlp"))

    after = json.loads((folder / "manifest.json").read_text())
    assert (folder / "target.onnx").read_bytes() == target_bytes
    # The de-trigger thresholds of detectors both and detrigger_or_repaired belonged to the old
    # AE: the swap drops them.
    for name in ("both", "detrigger_or_repaired"):
        assert name in before["detectors"] and name not in after["detectors"]
        before["detectors"].pop(name)
    for key in ("target", "backdoor", "detectors", "classes", "input", "created"):
        assert after[key] == before[key]
    assert after["detrigger"]["architecture"] == "mlp"
    assert after["detrigger"]["sha256"] == sha256(folder / "detrigger.onnx")
    assert after["detrigger"]["sha256"] != before["detrigger"]["sha256"]
    assert after["description"].startswith("BadNets-backdoored demo kwon_cnn target with the mlp")
    swapped = after["training"]["detrigger_swap"]
    assert swapped["ae"] == "mlp" and swapped["autoencoder"]["arch"] == "mlp"
    assert swapped["checkpoint"]["sha256"] == sha256(
        tmp_path / "runs" / "mnist" / "detrigger_mlp.ckpt"
    )
    assert swapped["previous"]["detrigger"] == before["detrigger"]
    assert swapped["previous"]["evaluation"] == before["evaluation"]
    assert after["evaluation"]["report"] == str(out)
    assert json.loads(out.read_text())["evaluation"] == after["evaluation"] == report["evaluation"]
    assert "| decision |" in out.with_suffix(".md").read_text()

    # The same numbers as reproduce's evaluation of the mlp AE with the torch target: the swap
    # ran the target's ONNX graph as torch, on the same images and validation split.
    mlp = reproduced["results"]["mlp"]
    ev = after["evaluation"]
    assert ev["n_test"] == mlp["n_test"] and ev["n_positive"] == mlp["n_positive"]
    for k in ("clean_accuracy", "clean_accuracy_after_ae", "attack_success_rate"):
        assert ev[k] == pytest.approx(mlp[k], abs=1 / mlp["n_test"])
    assert after["decision"]["calibration"]["n"] == mlp["n_validation"]
    assert ev["onnx_runtime"]["flag_agreement_with_torch"] >= 0.98
    assert ev["onnx_runtime"]["max_abs_logit_diff"] < 1e-3

    # Samples: same files, flags under the new decision.
    assert [s["file"] for s in after["samples"]] == [s["file"] for s in before["samples"]]
    assert all((folder / s["file"]).is_file() for s in after["samples"])

    # The service loads the changed set, and decides with its new rule.
    ms = ModelSet.load(folder, Settings(models=[folder]))
    assert ms.manifest.decision.threshold == pytest.approx(after["decision"]["threshold"])
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    assert len(ms.infer_scored(x).decisions.flagged) == 2


def test_swap_twice_with_the_same_ae_changes_no_number(tiny_preset, tiny_set):
    folder, _ = tiny_set
    first = swap_detrigger.main(swap_args(tiny_preset, folder, "--ae", "mlp"))
    second = swap_detrigger.main(swap_args(tiny_preset, folder, "--ae", "mlp"))
    assert second["evaluation"] == first["evaluation"]
    assert second["detrigger"]["sha256"] == first["detrigger"]["sha256"]
    assert second["previous"]["detrigger"] == first["detrigger"]

    # The reports README now shows the set as shipped: the mlp AE, its decision and numbers.
    readme = (Path(tiny_preset.reports_dir) / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| mnist | "))
    d = second["decision"]
    rule = "class change" if d["rule"] == "class_change" else f"{d['score']} > {d['threshold']:.4g}"
    assert f"| mlp AE, {rule} | {100 * second['evaluation']['detection_rate']:.2f} |" in row
    assert "the shipped mlp AE was put into the set after `make reproduce`" in readme
    assert f"by `python -m training.swap_detrigger --model-set {folder} " in readme


def test_unknown_ae_and_a_changed_target_are_refused(tiny_preset, tiny_set, capsys):
    folder, _ = tiny_set
    manifest = (folder / "manifest.json").read_text()
    with pytest.raises(SystemExit) as e:
        swap_detrigger.main(swap_args(tiny_preset, folder, "--ae", "nope"))
    assert e.value.code == 2
    assert "no AE 'nope'; it has mlp, conv" in capsys.readouterr().err

    (folder / "target.onnx").write_bytes(b"not the target")
    with pytest.raises(SystemExit):
        swap_detrigger.main(swap_args(tiny_preset, folder, "--ae", "mlp"))
    assert "does not match the sha256" in capsys.readouterr().err
    assert (folder / "manifest.json").read_text() == manifest  # nothing written


def test_a_new_reproduce_run_drops_the_swap_report(tiny_preset, tiny_set):
    folder, _ = tiny_set
    swap_detrigger.main(swap_args(tiny_preset, folder, "--ae", "mlp"))
    reports = Path(tiny_preset.reports_dir)
    assert (reports / "mnist" / "detrigger_swap.json").is_file()

    reproduce.run_dataset("mnist", tiny_preset)  # rewrites the set with the preset's AE
    rep.write_readme(reports)

    assert not (reports / "mnist" / "detrigger_swap.json").exists()
    assert not (reports / "mnist" / "detrigger_swap.md").exists()
    assert "detrigger_swap" not in json.loads((folder / "manifest.json").read_text())["training"]
    assert "put into the set after `make reproduce`" not in (reports / "README.md").read_text()
