"""GeneratedImage: a real PIL image that displays the server's own bytes while unchanged."""

from __future__ import annotations

import io
import pickle

import pytest
from PIL import Image

from miragic_nb import DownloadError, GeneratedImage
from miragic_nb._core.images import decode


def encoded(fmt: str, size: tuple[int, int] = (64, 48), color: str = "teal") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return buffer.getvalue()


def test_is_a_real_pil_image_with_metadata() -> None:
    data = encoded("JPEG")
    image = GeneratedImage.from_bytes(data, {"model": "flux", "job_id": "j1"})
    assert isinstance(image, Image.Image)
    assert (image.size, image.mode, image.format) == ((64, 48), "RGB", "JPEG")
    assert image.info["miragic"] == {"model": "flux", "job_id": "j1"}
    assert image.metadata["job_id"] == "j1"
    assert image.original_bytes == data
    # Derived images are plain PIL images; copies and pickles drop the subclass.
    assert type(image.crop((0, 0, 8, 8))) is Image.Image
    assert type(pickle.loads(pickle.dumps(image))) is Image.Image
    assert pickle.loads(pickle.dumps(image)).tobytes() == image.tobytes()


@pytest.mark.parametrize(("fmt", "mimetype"), [("JPEG", "image/jpeg"), ("PNG", "image/png")])
def test_display_bundle_is_the_original_bytes_under_one_mimetype(fmt: str, mimetype: str) -> None:
    data = encoded(fmt)
    image = GeneratedImage.from_bytes(data, {"model": "turbo", "job_id": "j2", "seed": 3})
    bundle, metadata = image.display_bundle()
    assert set(bundle) == {mimetype, "text/plain"}
    assert bundle[mimetype] == data
    assert metadata[mimetype] == {"width": 64, "height": 48}
    assert metadata["miragic"] == {
        "job_id": "j2",
        "prompt": None,
        "model": "turbo",
        "width": None,
        "height": None,
        "seed": 3,
        "image_url": None,
        "emulator": False,
        "reused": False,
    }
    assert "turbo · 64×48 · seed 3" in bundle["text/plain"]


def test_edited_pixels_are_not_shown_as_the_old_bytes() -> None:
    data = encoded("JPEG")
    image = GeneratedImage.from_bytes(data, {})
    assert image.is_unchanged()
    image.paste((255, 0, 0), (0, 0, 10, 10))
    assert not image.is_unchanged()
    bundle, _ = image.display_bundle()
    assert bundle["image/jpeg"] != data
    shown = Image.open(io.BytesIO(bundle["image/jpeg"])).convert("RGB")
    assert shown.getpixel((2, 2))[0] > 200  # the edit is visible


def test_only_formats_frontends_can_show_are_decoded() -> None:
    # Every result is JPEG, PNG, WEBP or GIF, shown as its own bytes; a BMP is refused.
    for fmt in ("JPEG", "PNG", "WEBP", "GIF"):
        assert GeneratedImage.from_bytes(encoded(fmt), {}).mimetype == f"image/{fmt.lower()}"
    with pytest.raises(DownloadError, match="not JPEG/PNG/GIF/WEBP"):
        GeneratedImage.from_bytes(encoded("BMP"), {})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"<!doctype html><html><body>502</body></html>", "an HTML/XML page"),
        (b'{"success": false}', "a JSON document"),
        (encoded("JPEG")[:40], "not a decodable image"),
    ],
)
def test_bad_bytes_are_a_download_error(data: bytes, message: str) -> None:
    with pytest.raises(DownloadError, match=message):
        decode(data)


def test_pixel_cap_is_checked_before_decoding() -> None:
    data = encoded("PNG", size=(300, 300))
    with pytest.raises(DownloadError, match="300×300 pixels, over the 10,000-pixel cap"):
        decode(data, max_pixels=10_000)
