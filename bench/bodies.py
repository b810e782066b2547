"""The request bodies, built once from the model set's sample PNGs and written to files that wrk
sends: V2 JSON, V2 binary (the binary tensor data extension) and PNG multipart (/classify)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.load import Body


def sample_pngs(model_dir: Path, count: int, seed: int) -> list[bytes]:
    """``count`` of the set's clean samples (samples/clean_*.png), cycled in a seeded order: the
    traffic a guard sees almost all the time."""
    paths = sorted((model_dir / "samples").glob("clean_*.png"))
    if not paths:
        raise SystemExit(f"{model_dir} has no samples/*.png to send")
    order = np.random.default_rng(seed).permutation(len(paths))
    return [paths[order[i % len(paths)]].read_bytes() for i in range(count)]


def as_tensor(pngs: list[bytes], chw: tuple[int, int, int]) -> np.ndarray:
    """(N, C, H, W) float32 in [0, 1], as a V2 client would send the images."""
    c, _, _ = chw
    mode = "L" if c == 1 else "RGB"
    arrays = [np.asarray(Image.open(io.BytesIO(p)).convert(mode)) for p in pngs]
    x = np.stack(arrays).astype(np.float32) / 255.0
    return x[:, None] if c == 1 else x.transpose(0, 3, 1, 2)


def v2_json(x: np.ndarray, input_name: str) -> tuple[bytes, dict[str, str]]:
    body = {
        "inputs": [
            {"name": input_name, "shape": list(x.shape), "datatype": "FP32",
             "data": x.reshape(-1).tolist()}
        ]
    }  # fmt: skip
    return json.dumps(body, separators=(",", ":")).encode(), {"Content-Type": "application/json"}


def v2_binary(x: np.ndarray, input_name: str, output_name: str) -> tuple[bytes, dict[str, str]]:
    """JSON header, then the raw little-endian FP32 tensor; the output asked for as binary too."""
    raw = np.ascontiguousarray(x, dtype="<f4").tobytes()
    header = {
        "inputs": [
            {"name": input_name, "shape": list(x.shape), "datatype": "FP32",
             "parameters": {"binary_data_size": len(raw)}}
        ],
        "outputs": [{"name": output_name, "parameters": {"binary_data": True}}],
    }  # fmt: skip
    head = json.dumps(header, separators=(",", ":")).encode()
    return head + raw, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }


def png_multipart(pngs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    files = [("images", (f"{i}.png", p, "image/png")) for i, p in enumerate(pngs)]
    request = httpx.Request("POST", "http://x/classify", files=files)
    return request.read(), {"Content-Type": request.headers["content-type"]}


def build_bodies(
    model_dir: Path, sizes: tuple[int, ...], folder: Path, seed: int
) -> dict[tuple[str, int], Body]:
    """Every (kind, images per request) body, written under ``folder``."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    shape = manifest["input"]
    chw = (shape["channels"], shape["height"], shape["width"])
    input_name, output_name = manifest["target"]["input_name"], manifest["target"]["output_name"]
    bodies = {}
    for size in sizes:
        pngs = sample_pngs(model_dir, size, seed)
        x = as_tensor(pngs, chw)
        built = {
            "v2-json": v2_json(x, input_name),
            "v2-binary": v2_binary(x, input_name, output_name),
            "png-multipart": png_multipart(pngs),
        }
        for kind, (data, headers) in built.items():
            file = folder / f"{kind}-{size}.body"
            file.write_bytes(data)
            bodies[kind, size] = Body(kind, size, file, headers)
    return bodies
