"""`detrigger-guard fit` and `detrigger-guard calibrate`: options in, the training jobs called
(training.fit_set, training.calibrate_set). torch is imported only when a command runs."""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
import time
from pathlib import Path

import click

from cli.check import service_load

# the sampler's family sets (training.config.FAMILY_SET_NAMES; written out: no torch at load)
FAMILY_SET_NAMES = ("base", "stamped", "extended")

TRAIN_EXTRA = "pip install 'detrigger-guard[train]'"


def _floats(ctx, param, value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: give comma-separated numbers, e.g. 0.5,0.5,0.5"
        ) from None


def _size(ctx, param, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give HxW, e.g. 32x32") from None
    return h, w


def _confidence(ctx, param, value: str) -> float:
    from training.evaluation.metrics import parse_confidence

    try:
        return parse_confidence(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise click.ClickException(f"fitting needs the training extra: {TRAIN_EXTRA}") from None


def _command() -> str:
    return " ".join(["detrigger-guard", *(shlex.quote(a) for a in sys.argv[1:])])


def calibration_options(f):
    """The options fit and calibrate share."""
    opts = [
        click.option(
            "--target-fpr",
            default=0.01,
            show_default=True,
            help="share of clean validation images that may be flagged",
        ),
        click.option(
            "--confidence",
            default="0.95",
            show_default=True,
            callback=_confidence,
            help="probability that the FPR on new clean images is <= --target-fpr: fewer "
            "validation images are let above the threshold (0 or off: the plain quantile, "
            "which holds about half the time)",
        ),
        click.option(
            "--score",
            type=click.Choice(["prob_drop", "kl"]),
            default="prob_drop",
            show_default=True,
            help="the contract's score the threshold applies to",
        ),
        click.option(
            "--strip/--no-strip",
            default=True,
            show_default=True,
            help="also calibrate STRIP (a bank of validation images)",
        ),
        click.option(
            "--strip-n", default=16, show_default=True, help="STRIP: superimposed copies per input"
        ),
        click.option(
            "--strip-bank",
            default=64,
            show_default=True,
            help="STRIP: validation images in the bank (not calibrated on)",
        ),
        click.option(
            "--estimate-images",
            default=1000,
            show_default=True,
            help="validation images the estimates are measured on (0: none)",
        ),
        click.option(
            "--calibration-shift",
            type=click.IntRange(min=0),
            default=2,
            show_default=True,
            help="set the thresholds on the held-out images each moved by a random offset of up "
            "to this many pixels (edges reflected): a model is surer of images it trained on "
            "than of new ones, so thresholds set on such images as they are flag more new clean "
            "images than --target-fpr (0: as they are)",
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _calibration(kw: dict, seed: int, threads: int):
    from training.evaluation.calibration import CalibrationOptions

    return CalibrationOptions(
        target_fpr=kw["target_fpr"],
        confidence=kw["confidence"],
        score=kw["score"],
        strip=kw["strip"],
        strip_n=kw["strip_n"],
        strip_bank=kw["strip_bank"],
        estimate_images=kw["estimate_images"],
        shift=kw["calibration_shift"],
        seed=seed,
        threads=threads,
    )


@click.command()
@click.option(
    "--target",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="the ONNX image classifier to guard",
)
@click.option(
    "--data",
    required=True,
    help="images: a folder (one sub-folder per class, or flat) or mnist, fashion-mnist, cifar10",
)
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="the model-set folder to write"
)
@click.option(
    "--val",
    default=None,
    help="held-out clean images for calibration (default: a share of --data, see --val-fraction)",
)
@click.option(
    "--val-fraction",
    default=0.1,
    show_default=True,
    help="share of --data held out when --val is not given",
)
@click.option("--data-dir", default=None, help="where the preset datasets lie (with --data mnist)")
@click.option(
    "--layout",
    type=click.Choice(["auto", "NCHW", "NHWC"]),
    default="auto",
    show_default=True,
    help="the graph's input layout (auto: from where 1 or 3 sit)",
)
@click.option(
    "--mean",
    callback=_floats,
    default=None,
    help="per-channel mean the graph expects subtracted, e.g. 0.485,0.456,0.406",
)
@click.option("--std", callback=_floats, default=None, help="per-channel std to divide by")
@click.option(
    "--scale",
    type=float,
    default=None,
    help="multiply [0, 1] images by this first: 255 for a graph taking 0..255 "
    "(default: 255 for uint8 input, else 1)",
)
@click.option(
    "--size",
    callback=_size,
    default=None,
    help="HxW for a graph whose height and width are dynamic",
)
@click.option(
    "--output",
    default=None,
    help="which output holds the class scores (graphs with several outputs)",
)
@click.option(
    "--output-kind",
    type=click.Choice(["auto", "logits", "probabilities"]),
    default="auto",
    show_default=True,
    help="auto: probabilities when rows sum to 1",
)
@click.option("--name", default=None, help="the set's name (default: --out's folder name)")
@click.option(
    "--classes",
    default=None,
    help="class names, comma-separated or a file of one per line (default: 0..K-1)",
)
@click.option("--epochs", default=12, show_default=True, help="AE training epochs")
@click.option("--batch-size", default=128, show_default=True, help="AE batch size (per process)")
@click.option(
    "--time-budget",
    default=2700.0,
    show_default=True,
    help="seconds for the AE's training: the LR schedule runs on this clock and no epoch starts "
    "that would end past it (0: no budget)",
)
@click.option(
    "--recipe",
    type=click.Choice(["auto", "shared", "rgb"]),
    default="auto",
    show_default=True,
    help="the shipped random-trigger AE recipe: shared (MNIST, Fashion-MNIST) or rgb "
    "(CIFAR-10's); auto: rgb for colour graphs",
)
@click.option(
    "--families",
    type=click.Choice(FAMILY_SET_NAMES),
    default="stamped",
    show_default=True,
    help="the AE's training triggers: base (patches, blends, additive patterns), stamped (also "
    "frequency waves and input-specific patterns; reports/ae-candidates/families) or extended "
    "(also warps and photo filters, which it does not learn to undo)",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="auto: a GPU when torch sees one",
)
@click.option(
    "--run-dir", default=None, help="checkpoints, resumed from (default: <out>.work beside --out)"
)
@click.option("--threads", default=2, show_default=True, help="torch CPU threads per process")
@click.option("--seed", default=0, show_default=True, help="seed of the split, AE and draws")
@click.option("--force", is_flag=True, help="replace an existing --out")
@click.option(
    "--audit",
    is_flag=True,
    help="then audit the target for a backdoor (trigger synthesis on the training images, "
    "labelled with the target's own classes; report in OUT/audit); when it flags a class, its "
    "unlearned copy is written as OUT-repaired and the set gets detectors repaired and "
    "detrigger_or_repaired, calibrated on the validation images. On 2 CPU cores about 10 "
    "minutes more for MNIST-sized images, about 50 for CIFAR-10-sized",
)
@click.option(
    "--twin/--no-twin",
    default=True,
    show_default=True,
    help="then fine-tune a copy of the target on the training images, labelled with its own "
    "classes (no trigger needed): a backdoor keyed to a faint image-wide signal (warps, photo "
    "filters, gratings) that the AE cannot undo is often erased in the copy, so the set gets "
    "detectors repaired (target against twin) and detrigger_or_repaired, its default, "
    "calibrated on the validation images. --audit replaces it",
)
@click.option(
    "--twin-epochs",
    default=3,
    show_default=True,
    type=click.IntRange(min=1),
    help="twin: epochs of --twin-images images (a smaller folder is gone through more often)",
)
@click.option(
    "--twin-lr",
    default=1e-3,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="twin: Adam's learning rate, decayed linearly to 0",
)
@click.option(
    "--twin-images",
    default=20_000,
    show_default=True,
    type=click.IntRange(min=64),
    help="twin: at most this many training images (a seeded draw)",
)
@click.option(
    "--twin-reinit-head/--twin-keep-head",
    default=True,
    show_default=True,
    help="twin: start the copy's final linear layer afresh, so that it relearns from clean "
    "images alone which features mean which class",
)
@click.option(
    "--twin-head-penalty",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0, 10),
    help="twin: weight of a penalty on the copy's final layer pointing the way the target's "
    "does, its norm held (feature shift tuning; 0: none)",
)
@click.option(
    "--twin-adversarial",
    default=None,
    show_default="0.1 for greyscale images, 0.03 for colour",
    type=click.FloatRange(0, 1),
    help="twin: L-infinity radius of a universal perturbation kept against the copy, half of "
    "each batch trained with it and the clean image's class (adversarial unlearning; 0: none)",
)
@click.option(
    "--twin-triggers",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="twin: share of the batch rows without the universal perturbation stamped with a "
    "random trigger of --twin-trigger-families, trained with the clean image's class (0: none)",
)
@click.option(
    "--twin-trigger-families",
    type=click.Choice(FAMILY_SET_NAMES),
    default="extended",
    show_default=True,
    help="twin: the trigger families stamped (as --families; extended: also warps and photo "
    "filters, which the copy can learn to ignore)",
)
@click.option(
    "--twin-time-budget",
    default=540.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="twin: seconds; the learning rate decays on this clock when it runs ahead of the "
    "steps, and the fine-tune ends when it is spent (0: no budget)",
)
@calibration_options
@click.pass_context
def fit(ctx: click.Context, **kw) -> None:
    """Fit a model set for an ONNX classifier on a folder of images: wrap the target, train the
    de-trigger AE, calibrate, check and write the set atomically. Under
    `torchrun --nproc-per-node N` it trains data-parallel."""
    t0 = time.time()
    _require_torch()
    from training.fit.twin import TwinConfig
    from training.fit_set import FitOptions
    from training.fit_set import fit as fit_job
    from training.nets.onnx_target import TargetError, TargetOptions

    given = {k for k in kw if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT}
    if kw["audit"] and kw["twin"]:
        if "twin" in given:
            raise click.UsageError("--audit and --twin both write detector repaired: choose one")
        kw["twin"] = False  # the audit's unlearned copy is the set's repaired detector
    twin_options = sorted(k for k in given if k.startswith("twin_"))
    if not kw["twin"] and twin_options:
        names = ", ".join("--" + k.replace("_", "-") for k in twin_options)
        raise click.UsageError(f"{names}: only with the twin (not with --no-twin or --audit)")

    opts = FitOptions(
        target=kw["target"],
        data=kw["data"],
        out=kw["out"],
        val=kw["val"],
        val_fraction=kw["val_fraction"],
        data_dir=kw["data_dir"],
        name=kw["name"],
        classes=kw["classes"],
        target_options=TargetOptions(
            layout=kw["layout"],
            mean=kw["mean"],
            std=kw["std"],
            scale=kw["scale"],
            output=kw["output"],
            output_kind=kw["output_kind"],
            size=kw["size"],
        ),
        calibration=_calibration(kw, kw["seed"], kw["threads"]),
        epochs=kw["epochs"],
        batch_size=kw["batch_size"],
        time_budget=kw["time_budget"] or None,
        device=kw["device"],
        recipe=kw["recipe"],
        families=kw["families"],
        run_dir=kw["run_dir"],
        threads=kw["threads"],
        seed=kw["seed"],
        force=kw["force"],
        command=_command(),
    )
    try:
        read: list = []  # the images fit read, for the audit and the twin: one read of the folder
        report = fit_job(opts, verify=service_load, log=click.echo, on_split=read.append)
        if report and kw["audit"]:
            _audit_fitted(opts, read[0])
        if report and kw["twin"]:
            twin = TwinConfig(
                epochs=kw["twin_epochs"],
                lr=kw["twin_lr"],
                images=kw["twin_images"],
                seed=opts.seed,
                reinit_head=kw["twin_reinit_head"],
                head_penalty=kw["twin_head_penalty"],
                adversarial=kw["twin_adversarial"],
                triggers=kw["twin_triggers"],
                trigger_families=kw["twin_trigger_families"],
            )
            _twin_fitted(opts, read[0], twin, kw["twin_time_budget"] or None, "twin" in given)
    except (TargetError, FileExistsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if report:
        click.echo(f"fit: {(time.time() - t0) / 60:.1f} minutes in all")
        click.echo(f"detrigger-guard serve {shlex.quote(str(kw['out']))}")


def _add_repaired_fitted(opts, split, graph: Path, repair: dict | None = None) -> None:
    """Put ``graph`` into the fitted set as detector repaired and calibrate every detector on
    fit's validation images; the set is put back as it was if that fails."""
    from contract.manifest import Manifest
    from training.calibrate_set import CalibrateOptions, calibrate_images
    from training.evaluation.repaired import add_repaired
    from training.nets.manifest_file import write_manifest

    out = Path(opts.out)
    with add_repaired(out, graph, "prob_drop", opts.command, repair):
        calibrate_images(
            CalibrateOptions(
                model_set=str(out),
                data=f"validation: {split.val_source}",
                calibration=opts.calibration,
                command=opts.command,
            ),
            split.val,
            f"{len(split.val)} validation images ({split.val_source})",
            verify=service_load,
            log=click.echo,
            keep=("data", "target", "training"),  # fit's, under the new calibration
        )
        # A request that names no detector gets the two together (GUARD_DEFAULT_DETECTOR
        # still comes first where it is set).
        raw = json.loads((out / "manifest.json").read_text())
        raw["detectors"]["default"] = "detrigger_or_repaired"
        Manifest.model_validate(raw)
        write_manifest(out, raw)
    click.echo(
        f"{out}: detectors repaired and detrigger_or_repaired added from {graph}; "
        "detrigger_or_repaired is the set's default detector"
    )


def _audit_fitted(opts, split) -> None:
    """fit --audit: the audit of the set just written, on fit's own training images (its
    validation images stay unseen by the repair); when it flags a class, the repaired copy
    joins the set as detectors repaired and detrigger_or_repaired, calibrated on the validation
    images. The audit's verdict goes into the set's manifest and its report into OUT/audit; the
    set keeps fit's detectors alone if the audit flags nothing or anything fails."""
    from training.audit.__main__ import audit, labelled_by_target, parse_args

    out = Path(opts.out)
    args = parse_args(
        ["--model-set", str(out), "--out", str(out / "audit"), "--seed", str(opts.seed),
         "--threads", str(opts.threads), "--no-progress"]
    )  # fmt: skip
    args.images, args.command = f"{opts.data} (fit's training split)", opts.command
    args.calibrate_hint = False  # done below
    args.synth_images = min(args.synth_images, len(split.train) // 5)  # a small folder's share
    click.echo(f"audit: {len(split.train)} training images, labelled with the target's classes")
    try:
        report = audit(args, labelled_by_target(out, split.train, args))
    except ValueError as exc:  # too few images, a graph the audit cannot follow
        raise click.ClickException(f"{out} is written, but the audit cannot run: {exc}") from exc
    exported = report["exported"]
    if exported is None:
        click.echo(f"audit: {out} not flagged; the set keeps its detectors")
        return
    _add_repaired_fitted(opts, split, Path(exported["path"]))


def _twin_fitted(opts, split, cfg, time_budget: float | None, required: bool) -> None:
    """fit's twin: a copy of the target fine-tuned on fit's training images (training.fit.twin)
    joins the set as detectors repaired and detrigger_or_repaired, calibrated on the validation
    images, which the twin never trained on. A twin that cannot be made (a graph torch cannot
    follow) fails the command where --twin was asked for, else leaves the set as it is."""
    import tempfile

    from training.fit.twin import fine_tune_twin
    from training.fit_set import resolve_device
    from training.nets.onnx_torch import UnsupportedOnnx

    out = Path(opts.out)  # torch's threads: fit_job set them in this process
    click.echo(
        f"twin: fine-tuning a copy of the target on fit's {len(split.train)} training images"
    )
    with tempfile.TemporaryDirectory(prefix="twin-", dir=out.parent) as tmp:
        graph = Path(tmp) / "twin.onnx"
        try:
            record = fine_tune_twin(out / "target.onnx", split.train, split.val, graph, cfg,
                                    log=click.echo, device=resolve_device(opts.device),
                                    time_budget=time_budget)  # fmt: skip
        except (UnsupportedOnnx, ValueError) as exc:
            if required:
                raise click.ClickException(
                    f"{out} is written, but its twin cannot be made: {exc}"
                ) from exc
            click.echo(
                f"WARNING: no twin ({exc}); {out} keeps the AE alone (--no-twin skips the try)",
                err=True,
            )
            return
        _add_repaired_fitted(opts, split, graph, record)


# Options that only one of calibrate's two modes reads (--redraw-bank: also seed, strip_n and
# strip_bank in the second).
_NEW_IMAGES_ONLY = (
    "seed",
    "score",
    "strip",
    "strip_n",
    "strip_bank",
    "estimate_images",
    "calibration_shift",
)
_RECORDED_ONLY = ("dataset", "score_floor", "batch_size", "redraw_bank")
_BANK = ("seed", "strip_n", "strip_bank")


@click.command()
@click.argument("set_dir", metavar="SET", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--data",
    default=None,
    help="clean images the set's AE never trained on: a folder or a preset name",
)
@click.option(
    "--recorded-split",
    is_flag=True,
    help="instead of --data: the validation split the set's manifest records (a set made by "
    "make reproduce or fit); only thresholds change, the graphs and STRIP's bank stay byte "
    "for byte (--target-fpr defaults to the recorded one)",
)
@click.option(
    "--redraw-bank",
    is_flag=True,
    help="--recorded-split: draw STRIP's bank anew from the split (--strip-bank images, "
    "--strip-n copies, --seed; STRIP added to a set without it) and calibrate STRIP and both "
    "on the rest of the split; the de-trigger decision is kept",
)
@click.option(
    "--dataset",
    type=click.Choice(["mnist", "fashion-mnist", "cifar10", "folder"]),
    default=None,
    help="--recorded-split: the dataset of the split (default: the one the manifest records)",
)
@click.option(
    "--score-floor",
    type=float,
    default=None,
    help="--recorded-split: lowest de-trigger threshold (default: the score's floor, so that "
    "float rounding between runtimes never flags an image)",
)
@click.option(
    "--batch-size",
    default=64,
    show_default=True,
    help="--recorded-split: images per target call",
)
@click.option(
    "--unchanged-tolerance",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="first gate the AE graph: an image that the AE moves by at most this much in every "
    "pixel is returned unchanged, so the guard skips its second target pass (docs/"
    "model-contract.md, 'Unchanged images'); 0 removes a gate; then calibrate as asked",
)
@click.option(
    "--repaired",
    type=click.Path(exists=True),
    default=None,
    help="first add detector repaired: this ONNX classifier (or this model set's target, e.g. "
    "the audit's SET-repaired) is compared with the set's target on every image, and an image "
    "is flagged where they disagree (docs/model-contract.md, 'Detector repaired'); then "
    "calibrate it and detector detrigger_or_repaired, the AE or it (--recorded-split: these "
    "two alone, the other detectors keep their thresholds; --data: every detector)",
)
@click.option(
    "--repaired-score",
    type=click.Choice(["prob_drop", "kl"]),
    default="prob_drop",
    show_default=True,
    help="--repaired: the score of the target against the repaired graph",
)
@click.option("--data-dir", default=None, help="where the preset datasets lie")
@click.option("--threads", default=2, show_default=True, help="ONNX Runtime threads")
@click.option("--seed", default=0, show_default=True, help="seed of the bank draw")
@calibration_options
@click.pass_context
def calibrate(ctx: click.Context, set_dir: str, **kw) -> None:
    """Re-threshold an existing model set for --target-fpr: on new clean images (--data, STRIP's
    bank redrawn; the set is rewritten atomically), or on the validation split its manifest
    records (--recorded-split: the manifest's thresholds and records only; with --redraw-bank,
    STRIP's bank drawn again from the split and STRIP and both calibrated). --repaired first
    adds detector repaired (a repaired copy of the target), --unchanged-tolerance first gates
    the AE; either is undone if the calibration fails."""
    given = {k for k in kw if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT}
    if not (Path(set_dir) / "manifest.json").is_file():
        raise click.ClickException(f"{set_dir}: no manifest.json here (docs/model-contract.md)")
    if (kw["data"] is None) == (not kw["recorded_split"]):
        raise click.UsageError("give either --data DIR or --recorded-split")
    wrong: tuple[str, ...]
    if kw["data"] is not None:
        wrong = _RECORDED_ONLY
    else:
        wrong = tuple(k for k in _NEW_IMAGES_ONLY if not (kw["redraw_bank"] and k in _BANK))
    if given & set(wrong):
        flags = ", ".join("--" + k.replace("_", "-") for k in wrong if k in given)
        if kw["data"] is not None:
            mode = "--recorded-split"
        elif given & set(_BANK) and not given & (set(wrong) - set(_BANK)):
            mode = "--data or --redraw-bank"
        else:
            mode = "--data"
        raise click.UsageError(f"{flags}: only with {mode}")
    if kw["redraw_bank"] and kw["unchanged_tolerance"] is not None:
        raise click.UsageError(
            "--unchanged-tolerance: not with --redraw-bank, which keeps the de-trigger "
            "decision; gate with --recorded-split alone, then redraw the bank"
        )
    if kw["redraw_bank"] and kw["repaired"] is not None:
        raise click.UsageError(
            "--repaired: not with --redraw-bank, which calibrates STRIP only; add the repaired "
            "graph with --recorded-split alone, then redraw the bank"
        )
    if "repaired_score" in given and kw["repaired"] is None:
        raise click.UsageError("--repaired-score: only with --repaired")
    with contextlib.ExitStack() as stack:
        if kw["unchanged_tolerance"] is not None:
            from training.nets.gate import gate_model_set

            try:
                stack.enter_context(
                    gate_model_set(Path(set_dir), kw["unchanged_tolerance"], _command())
                )
            except ValueError as exc:
                raise click.ClickException(str(exc)) from exc
            click.echo(f"{set_dir}: AE gated at unchanged tolerance {kw['unchanged_tolerance']}")
        if kw["repaired"] is not None:
            from training.evaluation.repaired import add_repaired

            try:
                stack.enter_context(
                    add_repaired(
                        Path(set_dir), Path(kw["repaired"]), kw["repaired_score"], _command()
                    )
                )
            except ValueError as exc:
                raise click.ClickException(str(exc)) from exc
            click.echo(
                f"{set_dir}: detectors repaired and detrigger_or_repaired added from "
                f"{kw['repaired']}"
            )
        _calibrate_mode(set_dir, kw, given)
    click.echo(f"detrigger-guard serve {shlex.quote(set_dir)}")


def _calibrate_mode(set_dir: str, kw: dict, given: set[str]) -> None:
    if kw["redraw_bank"]:
        _redraw_bank(set_dir, kw, "target_fpr" in given)
    elif kw["recorded_split"]:
        _recalibrate(set_dir, kw, "target_fpr" in given)
    else:
        from training.calibrate_set import CalibrateOptions
        from training.calibrate_set import calibrate as calibrate_job

        opts = CalibrateOptions(
            model_set=set_dir,
            data=kw["data"],
            data_dir=kw["data_dir"],
            calibration=_calibration(kw, kw["seed"], kw["threads"]),
            command=_command(),
        )
        try:
            calibrate_job(opts, verify=service_load, log=click.echo)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc


def _redraw_bank(set_dir: str, kw: dict, fpr_given: bool) -> None:
    import json

    from contract.manifest import read_manifest
    from training.evaluation.recalibration import recorded_dataset, recorded_target_fpr
    from training.evaluation.strip import StripOptions, calibrate_model_set

    folder = Path(set_dir)
    try:
        raw = json.loads((folder / "manifest.json").read_text())
        opts = StripOptions(
            model_set=set_dir,
            dataset=kw["dataset"] or recorded_dataset(folder, raw),
            data_dir=kw["data_dir"],
            n=kw["strip_n"],
            target_fpr=kw["target_fpr"]
            if fpr_given
            else recorded_target_fpr(read_manifest(folder)),
            confidence=kw["confidence"],
            bank_size=kw["strip_bank"],
            seed=kw["seed"],
            batch_size=kw["batch_size"],
            threads=kw["threads"],
        )
        for problem in opts.problems():
            raise ValueError(problem)
        calibrate_model_set(opts, _command())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


def _recalibrate(set_dir: str, kw: dict, fpr_given: bool) -> None:
    from training.evaluation.recalibration import RecalibrateOptions, recalibrate

    opts = RecalibrateOptions(
        model_set=set_dir,
        dataset=kw["dataset"],
        data_dir=kw["data_dir"],
        target_fpr=kw["target_fpr"] if fpr_given else None,
        confidence=kw["confidence"],
        score_floor=kw["score_floor"],
        batch_size=kw["batch_size"],
        threads=kw["threads"],
        command=_command(),
        # a repaired graph just added: calibrate it alone, unless the AE was gated too
        only_repaired=kw["repaired"] is not None and kw["unchanged_tolerance"] is None,
    )
    try:
        recalibrate(opts, log=click.echo)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    for line in service_load(Path(set_dir)):
        click.echo(line)
