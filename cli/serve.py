"""`detrigger-guard serve SET...`: the guard (uvicorn, one worker) on the given model sets."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument(
    "sets", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--mode",
    type=click.Choice(["flag", "block", "repair"]),
    help="Default mode for requests that name none (GUARD_DEFAULT_MODE; default flag).",
)
@click.option(
    "--detector",
    type=click.Choice(["detrigger", "strip", "both", "repaired", "detrigger_or_repaired"]),
    help="Default detector where a set offers it (GUARD_DEFAULT_DETECTOR; default: each "
    "set's own, as its manifest's detectors.default says, else detrigger).",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
    help="The guard's log level (GUARD_LOG_LEVEL; default INFO).",
)
def serve(
    sets: tuple[Path, ...],
    host: str,
    port: int,
    mode: str | None,
    detector: str | None,
    log_level: str | None,
) -> None:
    """Serve the model sets SETS (folders with manifest.json): POST /classify, the KServe V2
    protocol and /metrics. The first set is the default one. Every other setting comes from the
    GUARD_* environment variables (README, Settings), e.g. GUARD_UPSTREAMS for a sidecar in
    front of Triton, KServe or MLServer. One process, one worker: scale with replicas."""
    import uvicorn

    from service.main import create_app
    from service.settings import Settings

    chosen = {"default_mode": mode, "default_detector": detector, "log_level": log_level}
    settings = Settings(models=list(sets), **{k: v for k, v in chosen.items() if v is not None})
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        access_log=False,  # the guard writes its own access line (guard.access)
        server_header=False,
        log_level=settings.log_level.lower(),
        log_config=None,  # create_app already sent uvicorn's loggers to the guard's JSON lines
    )
