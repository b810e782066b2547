"""`detrigger-guard classify FILE... --url URL`: a small client of a running guard's /classify."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


@click.command()
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="The guard.")
@click.option("--model", help="Model set name (default: the guard's default set).")
@click.option("--mode", type=click.Choice(["flag", "block", "repair"]), help="flag, block, repair.")
@click.option("--detector", type=click.Choice(["detrigger", "strip"]), help="The detector.")
@click.option("--resize", is_flag=True, help="Resize the images to the model's input size.")
@click.option("--api-key", envvar="GUARD_API_KEY", help="API key (or GUARD_API_KEY).")
@click.option("--json", "as_json", is_flag=True, help="Print the guard's JSON answer as is.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the answer.")
def classify(
    files: tuple[Path, ...],
    url: str,
    model: str | None,
    mode: str | None,
    detector: str | None,
    resize: bool,
    api_key: str | None,
    as_json: bool,
    timeout: float,
) -> None:
    """Send FILES (images) to a running guard's POST /classify and print one line per image:
    its class, whether it was flagged, the score and what the mode answers. Exits 1 when the
    guard refuses the request (its error is printed), 2 when it cannot be reached."""
    import httpx

    params = {"model": model, "mode": mode, "detector": detector}
    params = {k: v for k, v in params.items() if v is not None}
    if resize:
        params["resize"] = "true"
    headers = {"X-API-Key": api_key} if api_key else {}
    uploads = [("images", (f.name, f.read_bytes(), "application/octet-stream")) for f in files]
    try:
        r = httpx.post(
            url.rstrip("/") + "/classify",
            params=params,
            files=uploads,
            headers=headers,
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        click.echo(f"cannot reach the guard at {url}: {exc}", err=True)
        sys.exit(2)
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    if r.status_code != 200:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        click.echo(
            f"{r.status_code} {error.get('type', '')}: {error.get('message', r.text)}", err=True
        )
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    for result in body["results"]:
        answer = result["answer"]
        said = "blocked" if answer is None else f"answer {answer['label']}"
        flag = "FLAGGED" if result["flagged"] else "clean"
        click.echo(
            f"{result['filename']}: {flag} (predicted {result['predicted']['label']}, "
            f"{result['score_name']} {result['score']:.4g} vs {result['threshold']:.4g}); {said}"
        )
    click.echo(
        f"{body['flagged']} of {len(body['results'])} flagged by {body['detector']} "
        f"on {body['model']} in mode {body['mode']}"
    )
