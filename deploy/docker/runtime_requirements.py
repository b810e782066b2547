"""Print the service's runtime requirements, one per line, for `pip install -r`.

They are the non-extra `dependencies` of pyproject.toml, so the image installs
exactly what `pip install .` would and never the `train` extra (torch). The
ONNX Runtime package is swapped for the image's flavour (`onnxruntime-gpu` in the
GPU image), keeping the version bound.

    python3 runtime_requirements.py pyproject.toml --onnxruntime onnxruntime-gpu
"""

import argparse
import re

import tomllib

ORT_PACKAGES = ("onnxruntime", "onnxruntime-gpu")


def runtime_requirements(pyproject: dict, onnxruntime: str) -> list[str]:
    """The project's runtime dependencies with the onnxruntime package renamed."""
    if onnxruntime not in ORT_PACKAGES:
        raise ValueError(f"--onnxruntime must be one of {ORT_PACKAGES}, not {onnxruntime!r}")
    out = []
    for req in pyproject["project"]["dependencies"]:
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
    args = parser.parse_args()
    with open(args.pyproject, "rb") as f:
        pyproject = tomllib.load(f)
    print("\n".join(runtime_requirements(pyproject, args.onnxruntime)))


if __name__ == "__main__":
    main()
