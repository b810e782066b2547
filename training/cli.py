"""What the training commands' argument parsers share."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from training import config
from training.evaluation.metrics import DEFAULT_CONFIDENCE, parse_confidence


def parser(doc: str | None, module: str) -> argparse.ArgumentParser:
    """A parser whose usage names the command as typed (`python -m <module>`, not the file,
    which for a package would read __main__.py) and whose --help shows the docstring as written."""
    return argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def require_model_set(folder: Path) -> None:
    """Stop with one line (no traceback) when `folder` holds no manifest.json."""
    if not (folder / "manifest.json").is_file():
        raise SystemExit(
            f"{folder}: no manifest.json here; --model-set takes a model set folder "
            "(docs/model-contract.md)"
        )


def add_data_dir(p: argparse.ArgumentParser) -> None:
    """--data-dir: where the dataset files are looked for before the standard places."""
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder looked at first for the data files (default: the standard places, see "
        "training/data/datasets.py)",
    )


def log_to(path: Path) -> None:
    """Log INFO lines with a timestamp to the console and to ``path`` (its folder is made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(message)s",
        handlers=[logging.StreamHandler(), logging.FileHandler(path)],
    )


def add_dataset(p: argparse.ArgumentParser, what: str) -> None:
    """--dataset (one of the presets, default mnist; ``what`` says what it picks) and --data-dir."""
    p.add_argument(
        "--dataset",
        default="mnist",
        choices=list(config.PRESETS),
        help=f"{what} (default: mnist)",
    )
    add_data_dir(p)


def refuse_in_default_run_dir(
    p: argparse.ArgumentParser, run_dir: str, changed: list[str], what: str, checkpoint: str
) -> None:
    """Stop (parser error) when recipe flags `changed` (field names) alter `what` while run_dir is
    the parser's default: the recipe is not in the checkpoint's name, so the run would overwrite
    the checkpoint `make reproduce` reloads (`checkpoint`, a path under run_dir)."""
    if changed and run_dir == p.get_default("run_dir"):
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        p.error(
            f"{flags} {'changes' if len(changed) == 1 else 'change'} the preset's {what}; its "
            f"checkpoint {checkpoint} would be replaced: give another --run-dir"
        )


def add_confidence(p: argparse.ArgumentParser, default: float | None = DEFAULT_CONFIDENCE) -> None:
    """--confidence: the calibration's confidence (metrics.allowed_exceedances), a number in
    [0, 1) or "off" (= 0, the plain quantile)."""

    def parse(value: str) -> float:
        try:
            return parse_confidence(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    p.add_argument(
        "--confidence",
        type=parse,
        default=default,
        help="probability that the FPR on new clean images is <= --target-fpr: fewer "
        "calibration images are let past the threshold (0 or off: the plain quantile, which "
        f"holds about half the time; default: {default if default is not None else 'see above'})",
    )
