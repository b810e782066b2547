"""A V2 input tensor -> the model contract's images, (N, C, H, W) float32 in [0, 1].

Accepted: FP32 in [0, 1] or UINT8 in [0, 255], NCHW or NHWC (the input's parameter ``layout``,
else the request's, else NCHW); or BYTES, one encoded image file per element (binary tensor
data, or base64 text in JSON), which the guard decodes as it does /classify's uploads. Runs in
a worker thread, never on the event loop.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

from contract.errors import IMAGE_FORMATS_TEXT, InvalidImage, InvalidRequest, WrongImageSize
from service.guard import ImageInput
from service.protocol.infer_type import InferRequest, InferTensor

LAYOUTS = ("NCHW", "NHWC")


def image_accepts(chw: tuple[int, int, int]) -> str:
    c, h, w = chw
    return (
        f"one input: FP32 in [0, 1] or UINT8 in [0, 255] of shape [N, {c}, {h}, {w}] (NCHW) or "
        f"[N, {h}, {w}, {c}] (parameters.layout 'NHWC'); or BYTES of shape [N] or [N, 1], "
        f"each element an image file ({IMAGE_FORMATS_TEXT}; base64 text in JSON)"
    )


def layout_of(tensor: InferTensor, request: InferRequest) -> str:
    layout = tensor.parameters.get("layout", request.parameters.get("layout", "NCHW"))
    if not isinstance(layout, str) or layout.upper() not in LAYOUTS:
        raise InvalidRequest(
            f"input {tensor.name!r}: layout {layout!r} is not one of {list(LAYOUTS)}",
            accepted="parameters.layout 'NCHW' or 'NHWC'",
        )
    return layout.upper()


def images_from_tensor(
    tensor: InferTensor, request: InferRequest, chw: tuple[int, int, int]
) -> np.ndarray:
    """(N, C, H, W) float32 in [0, 1] from one FP32 or UINT8 V2 input tensor (BYTES inputs are
    files: :func:`files_from_tensor`)."""
    c, h, w = chw
    accepts = image_accepts(chw)
    if tensor.datatype not in ("FP32", "UINT8"):
        raise InvalidRequest(
            f"input {tensor.name!r} has datatype {tensor.datatype}", accepted=accepts
        )
    layout = layout_of(tensor, request)
    want = (c, h, w) if layout == "NCHW" else (h, w, c)
    shape = tuple(tensor.shape)
    if len(shape) != 4 or shape[1:] != want:
        raise WrongImageSize(
            f"input {tensor.name!r} has shape {list(shape)}; layout {layout} of this model "
            f"needs [N, {', '.join(map(str, want))}]",
            accepted=accepts,
        )
    x = tensor.data if layout == "NCHW" else tensor.data.transpose(0, 3, 1, 2)
    if tensor.datatype == "UINT8":
        return np.ascontiguousarray(x, dtype=np.float32) / np.float32(255.0)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.size and not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
        raise InvalidImage(
            f"input {tensor.name!r}: FP32 pixel values must be finite and in [0, 1]",
            accepted=accepts,
        )
    return x


def files_from_tensor(tensor: InferTensor, chw: tuple[int, int, int]) -> list[ImageInput]:
    """A BYTES input of shape [N] or [N, 1]: one encoded image file per element."""
    shape = tuple(tensor.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise InvalidRequest(
            f"BYTES input {tensor.name!r} has shape {list(shape)}", accepted=image_accepts(chw)
        )
    return [
        ImageInput(_file_bytes(item, i, tensor.name, tensor.from_binary))
        for i, item in enumerate(tensor.data.reshape(-1))
    ]


def _file_bytes(item: Any, index: int, name: str, binary: bool) -> bytes:
    """Binary tensor data carries the file itself; JSON text carries it base64-encoded."""
    data = bytes(item)
    if binary:
        return data
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(
            f"input {name!r} element {index} is not base64 text; JSON BYTES images are base64",
            accepted="base64 text per element, or binary tensor data",
        ) from exc
