"""Print the service's runtime requirements, one per line, for `pip install -r`.

They are the non-extra `dependencies` of pyproject.toml, so the image installs
exactly what `pip install .` would and never the `train` extra (torch). The
ONNX Runtime package is swapped for the image's flavour (`onnxruntime-gpu` in the
GPU image), keeping the version bound.

    python3 runtime_requirements.py pyproject.toml --onnxruntime onnxruntime-gpu \
        --extras "tracing s3"

``--extras`` adds optional dependency sets of the service (the Dockerfile's IMAGE_EXTRAS:
the OpenTelemetry SDK and exporter, boto3); ``train`` and ``dev`` are refused, so torch never
enters an image.
"""

import argparse
import re

import tomllib

ORT_PACKAGES = ("onnxruntime", "onnxruntime-gpu")


NOT_IN_IMAGES = ("train", "dev")


def runtime_requirements(
    pyproject: dict, onnxruntime: str, extras: tuple[str, ...] = ()
) -> list[str]:
    """The project's runtime dependencies, and those of ``extras``, with the onnxruntime
    package renamed."""
    if onnxruntime not in ORT_PACKAGES:
        raise ValueError(f"--onnxruntime must be one of {ORT_PACKAGES}, not {onnxruntime!r}")
    optional = pyproject["project"].get("optional-dependencies", {})
    allowed = sorted(set(optional) - set(NOT_IN_IMAGES))
    requirements = list(pyproject["project"]["dependencies"])
    for extra in extras:
        if extra not in allowed:
            raise ValueError(f"--extras: {extra!r} is not a service extra; allowed: {allowed}")
        requirements += optional[extra]
    out = []
    for req in requirements:
        name = re.match(r"[A-Za-z0-9._-]+", req).group(0)
        if name.lower() in ORT_PACKAGES:
            req = onnxruntime + req[len(name) :]
        out.append(req)
    if not any(r.startswith(onnxruntime) for r in out):
        raise ValueError("pyproject.toml lists no onnxruntime dependency to swap")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", help="path to pyproject.toml")
    parser.add_argument(
        "--onnxruntime",
        default="onnxruntime",
        choices=ORT_PACKAGES,
        help="which ONNX Runtime package to install (default: onnxruntime)",
    )
    parser.add_argument(
        "--extras",
        default="",
        help="optional dependency sets to add, space- or comma-separated (e.g. 'tracing s3')",
    )
    args = parser.parse_args()
    with open(args.pyproject, "rb") as f:
        pyproject = tomllib.load(f)
    extras = tuple(e for e in args.extras.replace(",", " ").split() if e)
    print("\n".join(runtime_requirements(pyproject, args.onnxruntime, extras)))


if __name__ == "__main__":
    main()
