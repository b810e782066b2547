"""Image bytes -> the model's input tensor. Runs in a worker thread, never on the event loop."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, UnidentifiedImageError

from contract.errors import ImageTooLarge, InvalidImage, WrongImageSize

# Only formats whose decoders are in Pillow itself; nothing that shells out (EPS) or that
# exists mostly for exotic containers.
ACCEPTED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")


def describe(index: int, filename: str | None) -> str:
    return f"image {index}" + (f" ({filename!r})" if filename else "")


@contextmanager
def _opened(data: bytes, what: str, max_pixels: int) -> Iterator[Image.Image]:
    """The image, opened lazily (header only), its pixel count checked before any pixel data is
    decompressed. Errors of the decoder, here or in the with-block, become the guard's own."""
    if not data:
        raise InvalidImage(f"{what} is empty")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns first; treat the warning as the error it is.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
                pixels = image.width * image.height
                if pixels > max_pixels:
                    raise ImageTooLarge(
                        f"{what} is {image.width}x{image.height} = {pixels} pixels, more than "
                        f"the limit of {max_pixels}",
                        accepted=f"images of at most {max_pixels} pixels",
                    )
                yield image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(
            f"{what} is too large to decode: {exc}",
            accepted=f"images of at most {max_pixels} pixels",
        ) from exc
    except UnidentifiedImageError as exc:
        raise InvalidImage(f"{what} is not an image in an accepted format") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Truncated or corrupt data surfaces as OSError ("image file is truncated"), SyntaxError
        # (bad PNG chunks) or ValueError, depending on the decoder.
        raise InvalidImage(f"{what} is truncated or corrupt: {exc}") from exc


def _check_size(what: str, size: tuple[int, int], height: int, width: int) -> None:
    if size != (width, height):
        raise WrongImageSize(
            f"{what} is {size[0]}x{size[1]}; the model expects {width}x{height} (width x height)",
            accepted=f"{width}x{height} images, or any size with resize=true",
        )


def pixels(
    data: bytes,
    *,
    index: int,
    filename: str | None,
    height: int,
    width: int,
    resize: bool,
    max_pixels: int,
) -> int:
    """The pixels that decoding the image would produce, read from its header alone (cheap);
    the same size and pixel-limit errors as :func:`decode`, before any decoding."""
    what = describe(index, filename)
    with _opened(data, what, max_pixels) as image:
        if not resize:
            _check_size(what, image.size, height, width)
        return image.width * image.height


def decode(
    data: bytes,
    *,
    index: int,
    filename: str | None,
    channels: int,
    height: int,
    width: int,
    resize: bool,
    max_pixels: int,
) -> np.ndarray:
    """Decode one image to (C, H, W) float32 in [0, 1]: grayscale for C=1, RGB for C=3.

    The pixel limit is checked on the header, before any pixel data is decompressed.
    """
    what = describe(index, filename)
    with _opened(data, what, max_pixels) as image:
        image.seek(0)  # GIF / animated WebP: the first frame
        image.load()
        converted = image.convert("L" if channels == 1 else "RGB")

    if converted.size != (width, height):
        if not resize:
            _check_size(what, converted.size, height, width)
        converted = converted.resize((width, height), Image.Resampling.BILINEAR)

    array = np.asarray(converted, dtype=np.float32) / np.float32(255.0)  # (H, W) or (H, W, 3)
    if channels == 1:
        return array[None, :, :]
    return np.ascontiguousarray(array.transpose(2, 0, 1))
