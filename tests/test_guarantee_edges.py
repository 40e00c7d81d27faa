"""The edges of the functions behind the guarantees table, where mutation testing found them
unwatched (``docs/mutation.md``): the download checks, the origin-scoped key, and the create
request and its retries. Each test states one edge exactly; the servers are real loopback
sockets (``tests/hostile_servers.py``) wherever bytes cross the wire.
"""

from __future__ import annotations

import struct
import zlib

import pytest
from PIL import Image

from miragic_nb._core.errors import DownloadError
from miragic_nb._core.images import MAX_PIXELS, decode
from tests.hostile_servers import image_bytes

# -- decoding a result ---------------------------------------------------------------------


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` × ``height`` pixels, with almost no pixel data:
    what a decompression bomb looks like before it is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_an_image_of_exactly_the_pixel_cap_is_decoded() -> None:
    image = decode(image_bytes("PNG", (64, 48)), max_pixels=64 * 48)
    assert image.size == (64, 48)


def test_one_pixel_over_the_cap_is_refused_before_decoding() -> None:
    with pytest.raises(DownloadError) as caught:
        decode(image_bytes("PNG", (64, 48)), max_pixels=64 * 48 - 1)
    assert str(caught.value) == (
        "the result declares 64×48 pixels, over the 3,071-pixel cap; refused before decoding"
    )
    # 200: the result arrived whole; it is the content that is refused (never retried).
    assert caught.value.status_code == 200


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (10_000, 9_000),  # over Pillow's own limit: it warns, and the warning is an error here
        (20_000, 10_000),  # over twice that limit: Pillow refuses it itself
    ],
    ids=["pillow-warns", "pillow-refuses"],
)
def test_a_bomb_is_refused_even_when_the_cap_is_raised_past_pillows(
    width: int, height: int
) -> None:
    assert width * height > (Image.MAX_IMAGE_PIXELS or 0)
    with pytest.raises(DownloadError) as caught:
        decode(png_declaring(width, height), max_pixels=10**12)
    message = str(caught.value)
    assert message.startswith(
        "the result looks like a decompression bomb; refused before decoding ("
    ), message
    assert f"{width * height}" in message.replace(",", "")
    assert caught.value.status_code == 200


def test_the_default_cap_refuses_a_bomb_before_pillow_is_asked() -> None:
    with pytest.raises(DownloadError) as caught:
        decode(png_declaring(4097, 4096))
    assert f"over the {MAX_PIXELS:,}-pixel cap" in str(caught.value)


@pytest.mark.parametrize(
    ("data", "looks_like"),
    [
        (b"  \n<!DOCTYPE html><title>Sign in</title>", "an HTML/XML page"),
        (b"<HTML><body>gone</body></HTML>", "an HTML/XML page"),
        (b'<?xml version="1.0"?><Error><Code>AccessDenied</Code></Error>', "an HTML/XML page"),
        (b'{"error": "expired"}', "a JSON document"),
        (b'[{"error": "expired"}]', "a JSON document"),
        (b"\x00\x01" * 700, "1,400 bytes, not JPEG/PNG/GIF/WEBP"),
    ],
    ids=["doctype", "html", "xml", "json-object", "json-array", "bytes"],
)
def test_a_non_image_says_what_it_looks_like_and_which_decoder_error(
    data: bytes, looks_like: str
) -> None:
    with pytest.raises(DownloadError) as caught:
        decode(data)
    assert str(caught.value) == (
        f"the result is not a decodable image ({looks_like}): UnidentifiedImageError"
    )
    assert caught.value.status_code == 200


def test_an_empty_result_is_not_an_image() -> None:
    with pytest.raises(DownloadError) as caught:
        decode(b"")
    assert str(caught.value) == "the result is empty, not an image"
    assert caught.value.status_code == 200
