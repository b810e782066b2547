"""`detrigger-guard fit` end to end on user-like models and folders made in the test session,
with tiny settings: the set it writes must load in the service, flag a triggered image by the
service's own code, and carry its report; a run that fails leaves no set behind."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.check import service_load
from cli.main import main
from service.runtime.modelset import ModelSet
from service.settings import Settings
from tests.support import user_models as um
from training.evaluation.calibration import CalibrationOptions
from training.evaluation.detection import MIN_THRESHOLD
from training.fit_set import FitOptions, fit

TINY = ["--epochs", "1", "--target-fpr", "0.05", "--strip-bank", "16", "--strip-n", "8",
        "--estimate-images", "40", "--threads", "2"]  # fmt: skip


def invoke(*args: str):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


def fit_on_flat_folder(tmp_path: Path, src: Path, images: np.ndarray, *options: str):
    """`fit` on the images written as a flat folder of PNGs (no labels) into tmp_path / "set";
    (the result, that folder)."""
    um.write_pngs(tmp_path / "flat", images)
    out = tmp_path / "set"
    args = ["--target", str(src), "--data", str(tmp_path / "flat"), "--out", str(out)]
    return invoke("fit", *args, *options), out


def load(folder: Path) -> ModelSet:
    return ModelSet.load(folder, Settings(models=[folder]))


@pytest.mark.slow
def test_fit_on_a_normalising_3x40x48_graph_and_an_image_tree_with_broken_files(
    tmp_path: Path,
) -> None:
    chw = (3, 40, 48)
    net = um.train_backdoored(chw, n=600, epochs=2)
    src = um.export(um.Normalised(net, 0.45, 0.22), torch.zeros(2, *chw), tmp_path / "m.onnx")
    x, y = um.make_images(200, chw, 5)
    um.write_pngs(tmp_path / "data", x, y)
    um.add_broken_files(tmp_path / "data")
    um.add_broken_files(tmp_path / "data" / "3")
    out = tmp_path / "my set"
    result = invoke(
        "fit", "--target", str(src), "--data", str(tmp_path / "data"), "--out", str(out),
        "--val-fraction", "0.3", *TINY, "--confidence", "off",  # 60 held out: too few for 0.95
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1] == f"detrigger-guard serve '{out}'"
    assert re.fullmatch(r"fit: \d+\.\d minutes in all", lines[-2])
    assert "200 images; skipped 8 files (2 not an image file, 6 unreadable)" in result.output
    assert "check: the service loads it" in result.output
    assert "AE recipe: rgb" in result.output  # a colour graph gets CIFAR-10's recipe
    model_set = load(out)
    assert model_set.input_chw == chw and model_set.manifest.name == "my-set"
    # the twin is fit's default: detector repaired, and the AE-or-twin as the set's default
    assert [d.value for d in model_set.detectors] == [
        "detrigger", "strip", "both", "repaired", "detrigger_or_repaired"
    ]  # fmt: skip
    assert model_set.manifest.detectors.default.value == "detrigger_or_repaired"
    assert re.search(r"twin: fine-tuned on 140 images in \d+ s", result.output)
    report = json.loads((out / "report.json").read_text())
    assert report["calibration"]["estimates"]["note"].startswith("ESTIMATES")
    assert len(report["calibration"]["estimates"]["triggers"]) >= 6
    assert "NOT detection rates" in (out / "report.md").read_text()
    assert report["calibration"]["decision"]["shift"]["pixels"] == 2  # the default
    assert "shifted by up to 2 px" in (out / "report.md").read_text()
    assert "`--calibration-shift 0` (with fit's `--val DIR`" in (out / "report.md").read_text()
    assert report["training"]["families"] == "stamped"  # fit's default
    assert "trigger families stamped" in (out / "report.md").read_text()
    for name in ("score_histogram.png", "estimates.png", "strip_bank.npy"):
        assert (out / name).is_file()
    assert {p.name for p in (out / "samples").iterdir()} >= {"clean_00.png", "stamped_00.png"}
    assert not list(tmp_path.glob(".*partial"))
    assert (tmp_path / "my set.work" / "detrigger_conv_random_stamped.ckpt").is_file()
    # The check command passes it; a second fit refuses to overwrite without --force.
    assert invoke("check", str(out)).exit_code == 0
    again = CliRunner().invoke(main, ["fit", "--target", str(src), "--data", str(tmp_path /
                               "data"), "--out", str(out), *TINY])  # fmt: skip
    assert again.exit_code != 0 and "--force" in again.output


@pytest.mark.slow
def test_fit_on_an_nhwc_uint8_graph_flags_its_trigger_in_the_service(tmp_path: Path) -> None:
    chw = (1, 16, 16)
    net = um.train_backdoored(chw, n=1200, epochs=4)
    src = um.export(um.NhwcUint8(net), torch.zeros(2, 16, 16, 1, dtype=torch.uint8),
                    tmp_path / "m.onnx")  # fmt: skip
    x, _ = um.make_images(900, chw, 7)
    result, out = fit_on_flat_folder(
        tmp_path, src, x, "--val-fraction", "0.15", *TINY, "--epochs", "3", "--batch-size", "32"
    )
    assert result.exit_code == 0, result.output
    assert "layout NHWC" in result.output and "scaled by 255" in result.output
    assert "AE recipe: shared" in result.output
    model_set = load(out)
    # Fresh images of classes other than the target, with the backdoor's trigger stamped on.
    test_x, test_y = um.make_images(200, chw, 11)
    others = test_x[test_y != um.TARGET][:100]
    triggered = np.asarray(um.TRIGGER(others.copy()), np.float32)
    scored = model_set.infer_scored(triggered)
    assert (scored.decisions.predicted == um.TARGET).mean() > 0.9  # the backdoor works
    detection = scored.decisions.flagged.mean()
    false_positives = model_set.infer_scored(others).decisions.flagged.mean()
    assert detection >= 0.5 and false_positives <= 0.15, (detection, false_positives)


def test_two_outputs_are_refused_without_output_before_any_training(tmp_path: Path) -> None:
    chw = (1, 12, 16)
    src = um.export(um.TwoOutputs(um.Net(chw)), torch.zeros(2, *chw), tmp_path / "m.onnx",
                    ("features", "scores"))  # fmt: skip
    um.write_pngs(tmp_path / "data", um.make_images(150, chw, 0)[0])
    args = ["fit", "--target", str(src), "--data", str(tmp_path / "data"), "--val-fraction",
            "0.5", *TINY]  # fmt: skip
    refused = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a")])
    assert refused.exit_code != 0 and "--output NAME" in refused.output
    assert not list((tmp_path / "a.work").glob("*.ckpt"))  # no training began
    ok = invoke(*args, "--out", str(tmp_path / "b"), "--output", "scores")
    assert ok.exit_code == 0, ok.output
    assert load(tmp_path / "b").manifest.target.model_extra["wrapped"]["output_name"] == "scores"


def test_a_set_that_fails_its_check_is_never_published(tmp_path: Path) -> None:
    chw = (1, 12, 16)
    src = um.export(um.Net(chw), torch.zeros(1, *chw), tmp_path / "m.onnx", dynamic=False)
    um.write_pngs(tmp_path / "data", um.make_images(150, chw, 0)[0])
    opts = FitOptions(
        target=str(src), data=str(tmp_path / "data"), out=str(tmp_path / "set"),
        val_fraction=0.5, epochs=1, calibration=CalibrationOptions(
            target_fpr=0.05, strip_bank=16, strip_n=8, estimate_images=0),
    )  # fmt: skip

    def failing(folder: Path) -> list[str]:
        assert service_load(folder)  # it would load ...
        raise ValueError("refused by the caller's check")  # ... but the caller says no

    with pytest.raises(ValueError, match="refused by the caller"):
        fit(opts, verify=failing, log=lambda _: None)
    assert not (tmp_path / "set").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # The same run with the service's check publishes the set (the fixed batch made dynamic).
    report = fit(opts, verify=service_load, log=lambda _: None)
    assert load(tmp_path / "set").manifest.target.model_extra["wrapped"]["batch"] == 1
    assert report["training"]["epochs_done"] == 1


def test_a_run_the_time_budget_cut_short_is_published_with_a_warning(tmp_path: Path) -> None:
    chw = (1, 12, 16)
    src = um.export(um.Net(chw), torch.zeros(2, *chw), tmp_path / "m.onnx")
    um.write_pngs(tmp_path / "data", um.make_images(150, chw, 0)[0])
    result = invoke("fit", "--target", str(src), "--data", str(tmp_path / "data"),
                    "--val-fraction", "0.5", *TINY, "--epochs", "3", "--time-budget", "0.001",
                    "--out", str(tmp_path / "set"))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "WARNING: --time-budget stopped the AE after 1 of 3 epochs" in result.output
    assert "--force to resume" in result.output
    assert load(tmp_path / "set").manifest.name  # usable all the same


@pytest.mark.slow
def test_fit_with_audit_adds_the_repaired_copy_of_a_backdoored_target(tmp_path: Path) -> None:
    """--audit: the audit runs on fit's training images (labelled by the target), flags the
    backdoor's class, and its repaired copy joins the set as detectors repaired and
    detrigger_or_repaired, calibrated on fit's validation images; both flag the trigger."""
    chw = (1, 28, 28)  # at 16x16 every class's mask is as small as the 4x4 trigger's
    net = um.train_backdoored(chw, n=1500, epochs=4)
    # uint8 NHWC: fit's wrapper rounds, clips and casts, which the audit runs straight through
    src = um.export(um.NhwcUint8(net), torch.zeros(2, 28, 28, 1, dtype=torch.uint8),
                    tmp_path / "m.onnx")  # fmt: skip
    x, _ = um.make_images(1500, chw, 7)
    result, out = fit_on_flat_folder(
        tmp_path, src, x, "--val-fraction", "0.2", *TINY, "--epochs", "2", "--batch-size", "32",
        "--confidence", "off", "--audit",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "audit: 1200 training images, labelled with the target's classes" in result.output
    # The backdoor's class first (the mask family's verdict leads); on a model this small a
    # full-image family may flag another class after it (seen: [3, 0] on one machine).
    assert re.search(rf"FLAGGED, target class\(es\) \[{um.TARGET}(, \d+)*\]", result.output)
    assert "--data HELD_OUT_IMAGES" not in result.output  # fit calibrates the repair itself
    assert f"{out}: detectors repaired and detrigger_or_repaired added from {out}-repaired" in (
        result.output
    )
    assert result.output.strip().splitlines()[-1] == f"detrigger-guard serve {out}"
    model_set = load(out)
    assert [d.value for d in model_set.detectors][-2:] == ["repaired", "detrigger_or_repaired"]
    audit = json.loads((out / "audit" / "audit.json").read_text())
    assert audit["labels"] == "the target's own classes" and audit["summary"]["flagged"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["audit"]["target_classes"][0] == um.TARGET
    cal = manifest["detectors"]["detrigger_or_repaired"]["calibration"]
    assert cal["n"] + 16 == 300  # fit's validation images less STRIP's bank of 16
    test_x, test_y = um.make_images(200, chw, 11)
    others = test_x[test_y != um.TARGET][:100]
    triggered = np.asarray(um.TRIGGER(others.copy()), np.float32)
    # Each threshold is at least the score's floor, above this tiny repair's clean scores (~1e-4),
    # which its one epoch of unlearning moves little: the detectors flag more triggered images
    # than clean ones, few clean ones.
    for run in (model_set.repaired_scored, model_set.detrigger_or_repaired_scored):
        assert run(triggered).decisions.flagged.mean() > run(others).decisions.flagged.mean()
        assert run(others).decisions.flagged.mean() <= 0.15
    assert manifest["detectors"]["repaired"]["threshold"] >= MIN_THRESHOLD["prob_drop"]


def test_fit_offers_every_family_set_of_the_sampler():
    """fit's --families and --twin-trigger-families choices are written out (the CLI imports no
    torch at load); they must stay the sampler's sets."""
    from cli.fit import fit
    from training.config import FAMILY_SET_NAMES
    from training.data.trigger_sampler import FAMILY_SETS

    options = [p for p in fit.params if p.name in ("families", "twin_trigger_families")]
    assert len(options) == 2
    for option in options:
        assert tuple(option.type.choices) == FAMILY_SET_NAMES == tuple(FAMILY_SETS)


def test_fit_trains_on_the_stamped_families_by_default():
    """The default that reports/ae-candidates/families chose (input-specific patterns caught,
    no family lost at the same test FPR), the same for the command and for FitOptions."""
    from cli.fit import fit
    from training.fit_set import FitOptions

    (option,) = [p for p in fit.params if p.name == "families"]
    assert option.default == FitOptions(target="t.onnx", data="d", out="o").families == "stamped"


def test_the_command_and_fit_options_share_their_training_defaults():
    """The CLI writes its defaults out (it imports no torch at load); they must stay
    FitOptions': twice the recipe's 6 epochs (reports/byom/fit-epochs), batch and time budget."""
    from cli.fit import fit
    from training.config import random_ae
    from training.fit_set import FitOptions

    options = FitOptions(target="t.onnx", data="d", out="o")
    params = {p.name: p.default for p in fit.params}
    assert params["epochs"] == options.epochs == 2 * random_ae().epochs == 12
    assert params["batch_size"] == options.batch_size
    assert params["time_budget"] == options.time_budget


def test_the_twin_options_default_to_the_twin_recipe():
    """Each --twin-X option written out in the CLI defaults to TwinConfig's X, so that the
    command and the reports' recipe cannot drift apart."""
    from dataclasses import fields

    from cli.fit import fit
    from training.fit.twin import TwinConfig

    params = {p.name: p.default for p in fit.params}
    recipe = TwinConfig()
    shared = [f.name for f in fields(TwinConfig) if f"twin_{f.name}" in params]
    assert {"epochs", "lr", "images", "reinit_head", "head_penalty", "triggers"} <= set(shared)
    for name in shared:
        assert params[f"twin_{name}"] == getattr(recipe, name), name


def test_fit_with_twin_adds_a_fine_tuned_copy_as_detector_repaired(tmp_path: Path) -> None:
    """--twin: a copy of the target fine-tuned on fit's training images (labelled by the target,
    no trigger) joins the set as detectors repaired and detrigger_or_repaired, calibrated on
    fit's validation images; the manifest records how it was made, and the set loads."""
    chw = (1, 16, 16)
    net = um.train_backdoored(chw, n=1200, epochs=4)
    src = um.export(net, torch.zeros(2, *chw), tmp_path / "m.onnx")
    x, _ = um.make_images(1000, chw, 7)
    result, out = fit_on_flat_folder(
        tmp_path, src, x, "--val-fraction", "0.3", *TINY, "--batch-size", "32",
        "--confidence", "off", "--twin", "--twin-epochs", "10", "--twin-images", "500",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "twin: fine-tuning a copy of the target on fit's 700 training images" in result.output
    assert re.search(r"twin: fine-tuned on 500 images in \d+ s", result.output)
    assert result.output.strip().splitlines()[-1] == f"detrigger-guard serve {out}"
    model_set = load(out)
    assert [d.value for d in model_set.detectors][-2:] == ["repaired", "detrigger_or_repaired"]
    assert "detrigger_or_repaired is the set's default detector" in result.output
    assert model_set.default_detector(None).value == "detrigger_or_repaired"
    manifest = json.loads((out / "manifest.json").read_text())
    repair = manifest["detectors"]["repaired"]["source"]["repair"]
    assert repair["method"] == "fine-tune" and repair["images"] == 500
    assert repair["config"]["epochs"] == 10 and len(repair["epoch_losses"]) == 10
    # a twin, not a stranger: it keeps the target's answers on the validation images
    assert repair["val_images"] == 300 and repair["val_agreement"] >= 0.9
    assert (out / "repaired.onnx").read_bytes() != (out / "target.onnx").read_bytes()
    assert manifest["detectors"]["detrigger_or_repaired"]["calibration"]["n"] + 16 == 300
    clean, _ = um.make_images(200, chw, 11)
    assert model_set.detrigger_or_repaired_scored(clean).decisions.flagged.mean() <= 0.15
    assert not list(tmp_path.glob("twin-*"))  # the fine-tuned graph's scratch folder is gone


@pytest.mark.slow
def test_a_twin_the_graph_rules_out_leaves_the_set_alone_unless_asked_for(tmp_path: Path) -> None:
    """A fully convolutional classifier has no final linear layer for the twin's recipe: the
    default twin is skipped with a warning and the set keeps the AE; --twin fails the command
    (the set written before it stays as it was)."""
    chw = (1, 16, 16)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 10, 3),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
    )  # fmt: skip
    src = um.export(net, torch.zeros(2, *chw), tmp_path / "m.onnx")
    x, _ = um.make_images(300, chw, 7)
    result, out = fit_on_flat_folder(tmp_path, src, x, "--val-fraction", "0.4", *TINY)
    assert result.exit_code == 0, result.output
    assert "WARNING: no twin (no Gemm / MatMul node" in result.output
    assert result.output.strip().splitlines()[-1] == f"detrigger-guard serve {out}"
    model_set = load(out)
    assert [d.value for d in model_set.detectors] == ["detrigger", "strip", "both"]
    assert model_set.manifest.detectors.default is None
    asked = invoke("fit", "--target", str(src), "--data", str(tmp_path / "flat"), "--out",
                   str(out), "--val-fraction", "0.4", *TINY, "--force", "--twin")  # fmt: skip
    assert asked.exit_code == 1 and "is written, but its twin cannot be made" in asked.output
    assert [d.value for d in load(out).detectors] == ["detrigger", "strip", "both"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--twin", "--audit"], "--audit and --twin both write detector repaired: choose one"),
        (["--no-twin", "--twin-lr", "0.01"], "--twin-lr: only with the twin (not with --no-twin"),
        (["--audit", "--twin-images", "100"], "--twin-images: only with the twin"),
    ],
)
def test_fit_refuses_twin_options_that_do_not_go_together(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    (tmp_path / "m.onnx").write_bytes(b"")  # refused before it is read
    result = CliRunner().invoke(
        main, ["fit", "--target", str(tmp_path / "m.onnx"), "--data", "mnist",
               "--out", str(tmp_path / "set"), *extra],
    )  # fmt: skip
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "set").exists()
