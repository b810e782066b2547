"""`detrigger-guard check SET...`: validate model sets against the contract, then load each
exactly as the service loads it (ModelSet.load, then warm_up)."""

from __future__ import annotations

from pathlib import Path

import click


def service_load(folder: Path) -> list[str]:
    """Load `folder` as the service does and run its warm-up batches; the lines it passed."""
    from service.runtime.modelset import ModelSet
    from service.settings import Settings

    settings = Settings(models=[folder])
    model_set = ModelSet.load(folder, settings)
    model_set.warm_up((1, 3))
    detectors = ", ".join(d.value for d in model_set.detectors)
    return [f"the service loads it ({model_set.provider}; detectors {detectors}) and warms up"]


def check_folder(folder: Path) -> list[str]:
    """Every check of one set; raises on the first failure."""
    from training.evaluation.set_check import check_set

    _, lines = check_set(folder)
    return lines + service_load(folder)


@click.command()
@click.argument("sets", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
def check(sets: tuple[Path, ...]) -> None:
    """Check model-set folders: manifest schema, files and sha256, graph names and shapes, ONNX
    Runtime on a batch, and the service's own load and warm-up. Exit status 1 on a failure."""
    from contract.errors import ModelLoadError
    from training.evaluation.set_check import SetCheckError

    failed = 0
    for folder in sets:
        try:
            for line in check_folder(folder):
                click.echo(f"{folder}: ok: {line}")
        except (SetCheckError, ModelLoadError) as exc:
            failed += 1
            click.echo(f"{folder}: FAILED: {exc}", err=True)
    if failed:
        raise SystemExit(1)
    click.echo(f"{len(sets)} model set(s) pass")
