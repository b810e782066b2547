"""What the training commands' argument parsers share."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

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
    """Stop (parser error) when the options `changed` (as typed: flags or --recipe fields) alter
    `what` while run_dir is the parser's default: the recipe is not in the checkpoint's name, so
    the run would overwrite the checkpoint `make reproduce` reloads (`checkpoint`, a path under
    run_dir)."""
    if changed and run_dir == p.get_default("run_dir"):
        p.error(
            f"{', '.join(changed)} {'changes' if len(changed) == 1 else 'change'} the preset's "
            f"{what}; its checkpoint {checkpoint} would be replaced: give another --run-dir"
        )


def add_recipe(p: argparse.ArgumentParser, what: str, example: str) -> None:
    """--recipe FIELD=VALUE, repeatable: any scalar field of the preset's config for `what`
    (training/config.py), instead of a flag per field."""
    p.add_argument(
        "--recipe",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help=f"change one field of the preset's {what} (training/config.py), e.g. {example}; "
        "repeatable; a changed recipe needs another --run-dir (default: the preset's)",
    )


def _typed(field: str, text: str, current: Any) -> Any:
    """`text` read as the type of the field's current value."""
    kind = type(current)
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{field} takes true or false, got {text!r}")
        return text.lower() in ("true", "1")
    if kind in (int, float, str):
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"{field} takes a {kind.__name__}, got {text!r}") from None
    raise ValueError(f"{field} is not a number or a word: it has its own option or none")


def recipe(p: argparse.ArgumentParser, pairs: list[str], base: Any, own: tuple[str, ...]) -> Any:
    """`base` (a config dataclass) with the --recipe FIELD=VALUE changes; a field that another
    option of the command sets (`own`), an unknown field or a bad value stops with a parser error
    naming it (the config's own checks included)."""
    names = {f.name for f in dataclasses.fields(base)}
    changes: dict[str, Any] = {}
    for pair in pairs:
        field, sep, text = pair.partition("=")
        field = field.strip().replace("-", "_")
        if not sep:
            p.error(f"--recipe {pair!r}: give FIELD=VALUE")
        if field not in names:
            p.error(f"--recipe {field}: no such field; allowed: {', '.join(sorted(names))}")
        if field in own:
            p.error(f"--recipe {field}: set it with --{field.replace('_', '-')}")
        try:
            changes[field] = _typed(field, text.strip(), getattr(base, field))
        except ValueError as e:
            p.error(f"--recipe {e}")
    try:
        return dataclasses.replace(base, **changes)
    except ValueError as e:  # the config's own checks
        p.error(f"--recipe {e}")


def changed_fields(cfg: Any, base: Any, flags: bool = False) -> list[str]:
    """The fields in which `cfg` differs from `base`, as typed: `--recipe <field>`, or with
    `flags` the field's own option (`--<field>`)."""
    return [
        f"--{f.name.replace('_', '-')}" if flags else f"--recipe {f.name}"
        for f in dataclasses.fields(base)
        if getattr(cfg, f.name) != getattr(base, f.name)
    ]


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
