import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from contract.errors import ImageTooLarge, InvalidImage, WrongImageSize
from service.imaging import decode


def encode(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def gray(w: int = 28, h: int = 28) -> Image.Image:
    array = np.zeros((h, w), dtype=np.uint8)
    array[:4, :4] = 255
    array[10, :] = 128
    return Image.fromarray(array)


def run(
    data: bytes, channels: int = 1, size: int = 28, resize: bool = False, max_pixels: int = 10**6
):
    return decode(
        data, index=3, filename="x.img", channels=channels, height=size, width=size,
        resize=resize, max_pixels=max_pixels,
    )  # fmt: skip


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "GIF", "WEBP"])
def test_lossless_formats_decode_exactly(fmt: str) -> None:
    kw = {"lossless": True} if fmt == "WEBP" else {}
    x = run(encode(gray(), fmt, **kw))
    assert x.shape == (1, 28, 28) and x.dtype == np.float32
    assert x[0, 0, 0] == 1.0 and x[0, 20, 20] == 0.0
    assert x[0, 10, 5] == pytest.approx(128 / 255)


def test_jpeg_decodes_approximately() -> None:
    x = run(encode(gray(), "JPEG", quality=95))
    assert x.shape == (1, 28, 28)
    assert x[0, 1, 1] > 0.8 and x[0, 20, 20] < 0.1


def test_gif_uses_the_first_frame() -> None:
    first, second = gray(), Image.new("L", (28, 28), 255)
    data = encode(first, "GIF", save_all=True, append_images=[second])
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    x = run(data)
    assert x[0, 20, 20] == 0.0  # the second frame is all white


def test_rgb_model_gets_three_channels_and_gray_model_gets_one() -> None:
    array = np.zeros((28, 28, 3), dtype=np.uint8)
    array[..., 0] = 255  # pure red
    data = encode(Image.fromarray(array), "PNG")
    rgb = run(data, channels=3)
    assert rgb.shape == (3, 28, 28)
    assert rgb[0].min() == 1.0 and rgb[1].max() == 0.0 and rgb[2].max() == 0.0
    g = run(data, channels=1)
    assert g.shape == (1, 28, 28)
    assert g[0, 0, 0] == pytest.approx(round(0.299 * 255) / 255, abs=1 / 255)  # ITU-R 601 luma


def test_wrong_size_names_the_expected_size_unless_resize() -> None:
    data = encode(gray(40, 30), "PNG")
    with pytest.raises(WrongImageSize) as err:
        run(data)
    assert "28x28" in err.value.message and "40x30" in err.value.message
    assert "resize=true" in err.value.accepted
    assert run(data, resize=True).shape == (1, 28, 28)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with one tiny IDAT: a decompression bomb's
    header without the bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [2000, 100_000])
def test_pixel_limit_stops_bombs_before_decoding(side: int) -> None:
    with pytest.raises(ImageTooLarge) as err:
        run(png_header_only(side, side), max_pixels=1_000_000)
    assert "1000000" in err.value.message


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "empty"),
        (b"hello, I am text", "not an image"),
        (encode(gray(), "PNG")[:60], "truncated or corrupt"),
        (encode(gray(), "JPEG")[:200], "truncated or corrupt"),
        (encode(gray(), "TIFF"), "not an image in an accepted format"),  # valid, not accepted
    ],
)
def test_bad_bytes_raise_invalid_image(data: bytes, words: str) -> None:
    with pytest.raises(InvalidImage) as err:
        run(data)
    assert words in err.value.message
    assert "image 3 ('x.img')" in err.value.message
    assert "PNG" in err.value.accepted
