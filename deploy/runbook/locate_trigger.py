"""Locate the trigger in a flagged image: run it through the model set's de-trigger
autoencoder and report which pixels the autoencoder changed. A patch trigger is the region
the autoencoder removes, so the changed pixels outline it.

    python deploy/runbook/locate_trigger.py models/mnist flagged.png [--heatmap diff.png]

Prints the class before and after the autoencoder, the bounding box of the pixels it changed
most, and optionally writes a heat map (changed pixels bright, upscaled for viewing). The
image is decoded exactly as the guard decodes it (service.imaging.decode). Run from the
repository root, with the runtime dependencies installed (no torch needed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from service.imaging import decode  # noqa: E402

# Pixels whose change is at least this share of the largest change form the trigger region.
REGION_SHARE = 0.5
# A largest change below this (on [0, 1] pixels) means the autoencoder left the image alone.
NO_CHANGE = 0.05


def run(model_dir: Path, image_bytes: bytes, filename: str) -> dict:
    """The classes before and after the autoencoder and where it changed the image."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    shape = manifest["input"]
    x = decode(
        image_bytes,
        index=0,
        filename=filename,
        channels=shape["channels"],
        height=shape["height"],
        width=shape["width"],
        resize=True,
        max_pixels=50_000_000,
    )[None]  # (1, C, H, W) in [0, 1]
    providers = ["CPUExecutionProvider"]
    ae = ort.InferenceSession(str(model_dir / manifest["detrigger"]["file"]), providers=providers)
    target = ort.InferenceSession(str(model_dir / manifest["target"]["file"]), providers=providers)
    y = ae.run([manifest["detrigger"]["output_name"]], {manifest["detrigger"]["input_name"]: x})[0]
    t_in, t_out = manifest["target"]["input_name"], manifest["target"]["output_name"]
    logits = target.run([t_out], {t_in: np.concatenate([x, y]).astype(np.float32)})[0]
    before, after = (int(k) for k in logits.argmax(axis=1))
    diff = np.abs(x[0] - y[0]).max(axis=0)  # (H, W): the largest change over channels
    result = {
        "predicted": manifest["classes"][before],
        "detriggered": manifest["classes"][after],
        "class_changed": before != after,
        "max_change": round(float(diff.max()), 4),
        "region": None,
        "diff": diff,
    }
    if diff.max() >= NO_CHANGE:
        rows, cols = np.nonzero(diff >= REGION_SHARE * diff.max())
        result["region"] = {
            "top": int(rows.min()),
            "left": int(cols.min()),
            "bottom": int(rows.max()),
            "right": int(cols.max()),
            "pixels": int(rows.size),
        }
    return result


def write_heatmap(diff: np.ndarray, path: Path, scale: int = 8) -> None:
    peak = float(diff.max()) or 1.0
    image = Image.fromarray((diff / peak * 255).astype(np.uint8), mode="L")
    image.resize((diff.shape[1] * scale, diff.shape[0] * scale), Image.Resampling.NEAREST).save(
        path
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="model-set folder (with manifest.json)")
    parser.add_argument("image", type=Path, help="the flagged image (PNG, JPEG, ...)")
    parser.add_argument("--heatmap", type=Path, help="also write the change heat map here (PNG)")
    args = parser.parse_args()
    result = run(args.model_dir, args.image.read_bytes(), args.image.name)
    if args.heatmap:
        write_heatmap(result["diff"], args.heatmap)
    del result["diff"]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
