"""The "Downloads are checked" and "Expired signed URLs" guarantees, against hand-written servers.

Each result file is served by ``tests.hostile_servers.ScriptedApi`` over a real loopback socket
(never our own emulator), so every byte and header of the download is the test's choice.
"""

from __future__ import annotations

import inspect
import io
import random
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from miragic_nb import Client, DownloadError, History
from tests.hostile_servers import (
    JOB_ID,
    RESULT_PATH,
    ScriptedApi,
    http_answer,
    image_bytes,
    status_answer,
)

KEY = "download-test-key-0123"


def client_for(api: ScriptedApi, home: Path, **options: Any) -> Client:
    return Client(api_key=KEY, base_url=api.url, history=History(home), timeout=10.0, **options)


def noise_png(size: tuple[int, int]) -> bytes:
    """A PNG that does not compress: its file size grows with its pixels."""
    rng = random.Random(7)
    image = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A valid, small PNG of ``width`` x ``height`` black pixels: zlib shrinks the zeros."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)  # filter byte + RGB
    rows = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


def pixel_buffers_made() -> int:
    """How many pixel buffers Pillow has allocated in this process (its own counter)."""
    return int(Image.core.get_stats()["new_count"])  # type: ignore[attr-defined]


def endless_body() -> Iterator[bytes | float]:
    """A result whose length is never declared and whose body does not end by itself."""
    yield http_answer(200, b"", headers=[("Content-Type", "image/png")], content_length=False)
    block = b"\x89PNG" + b"\x00" * 65532
    while True:
        yield block


# -- Downloads are checked -------------------------------------------------------------------


def test_decompression_bomb_is_refused_before_its_pixels_are_allocated(tmp_path: Path) -> None:
    # 5000 x 5000 is a valid PNG of about 75 kB that Pillow alone would decode (it is under
    # Pillow's own bomb limit) into 75 MB of pixels; the client's pixel cap must refuse it
    # from the header, before Pillow allocates a single pixel buffer.
    bomb = png_bomb(5000, 5000)
    assert len(bomb) < 200_000
    files = {RESULT_PATH: http_answer(200, bomb, headers=[("Content-Type", "image/png")])}
    with ScriptedApi(files=files) as api, client_for(api, tmp_path) as client:
        made_before = pixel_buffers_made()
        with pytest.raises(DownloadError) as caught:
            client.generate("a lighthouse")
        made = pixel_buffers_made() - made_before
    assert "5000×5000 pixels, over the" in str(caught.value)
    assert "refused before decoding" in str(caught.value)
    assert caught.value.job_id == JOB_ID
    assert made == 0  # not one pixel buffer
    record = History(tmp_path).get(JOB_ID)
    assert record is not None
    assert record.status == "ERROR"


def test_download_size_cap(tmp_path: Path) -> None:
    default = inspect.signature(Client).parameters["max_download_bytes"].default
    assert default == 64 * 1024 * 1024
    cap = 50_000
    large = noise_png((200, 200))
    assert len(large) > 2 * cap

    # Declared too large: refused from the Content-Length, before the body is read.
    declared = {RESULT_PATH: http_answer(200, large, headers=[("Content-Type", "image/png")])}
    with ScriptedApi(files=declared) as api, client_for(api, tmp_path, max_download_bytes=cap) as c:
        with pytest.raises(DownloadError, match=r"is 1\d\d,\d{3} bytes, over the 50,000-byte cap"):
            c.generate("a lighthouse")
        assert api.server.count("GET", RESULT_PATH) == 1  # a refusal is not retried

    # Not declared, and endless: reading stops at the cap, long before the 10 s deadline
    # (which would say "did not finish in time" instead).
    endless = {RESULT_PATH: endless_body}
    with ScriptedApi(files=endless) as api, client_for(api, tmp_path, max_download_bytes=cap) as c:
        with pytest.raises(DownloadError, match=r"^result exceeds the 50,000-byte cap") as caught:
            c.generate("a lighthouse")
    assert caught.value.job_id == JOB_ID

    # Under the cap, the same image arrives whole.
    with ScriptedApi(files=declared) as api:
        with client_for(api, tmp_path, max_download_bytes=len(large)) as client:
            assert client.generate("a lighthouse").original_bytes == large


def test_size_mismatch_is_accepted_and_noted(tmp_path: Path) -> None:
    # The server answers a 512x512 request with a 64x48 picture: the user still gets the
    # image (it is paid for), and its metadata and the history say what happened.
    served = image_bytes("PNG", (64, 48))
    files = {RESULT_PATH: http_answer(200, served, headers=[("Content-Type", "image/png")])}
    with ScriptedApi(files=files) as api, client_for(api, tmp_path) as client:
        image = client.generate("a lighthouse", width=512, height=512)
    assert image.size == (64, 48)
    assert image.original_bytes == served
    meta = image.info["miragic"]
    assert (meta["width"], meta["height"]) == (512, 512)
    assert meta["size_mismatch"] is True
    assert meta["image_size"] == [64, 48]
    record = History(tmp_path).get(JOB_ID)
    assert record is not None
    assert record.status == "COMPLETED"
    assert record.image_size == (64, 48)


def test_a_result_of_the_requested_size_is_not_noted(tmp_path: Path) -> None:
    served = image_bytes("PNG", (256, 256))
    files = {RESULT_PATH: http_answer(200, served, headers=[("Content-Type", "image/png")])}
    with ScriptedApi(files=files) as api, client_for(api, tmp_path) as client:
        image = client.generate("a lighthouse", width=256, height=256)
    assert "size_mismatch" not in image.info["miragic"]
    assert image.info["miragic"]["image_size"] == [256, 256]


# -- Expired signed URLs ---------------------------------------------------------------------

OLD = "/files/old.png"
NEW = "/files/new.png"
FORBIDDEN = http_answer(403, b"Request has expired", reason="Forbidden")


@pytest.mark.parametrize("fresh_url_works", [True, False], ids=["refreshed", "still-refused"])
def test_expired_result_url_is_refreshed_once(tmp_path: Path, fresh_url_works: bool) -> None:
    # The first status answer carries a signed URL that has expired by the time it is
    # fetched (403); the client reads the job again, once, and downloads the fresh URL.
    statuses = [
        status_answer(processedImageUrl=f"{OLD}?expires=1&signature=aa"),
        status_answer(processedImageUrl=f"{NEW}?expires=2&signature=bb"),
        status_answer(processedImageUrl="/files/third.png?expires=3&signature=cc"),
    ]
    served = image_bytes("PNG")
    files = {
        OLD: FORBIDDEN,
        NEW: http_answer(200, served, headers=[("Content-Type", "image/png")])
        if fresh_url_works
        else FORBIDDEN,
        "/files/third.png": http_answer(200, served, headers=[("Content-Type", "image/png")]),
    }
    with ScriptedApi(statuses=statuses, files=files) as api, client_for(api, tmp_path) as c:
        if fresh_url_works:
            image = c.generate("a lighthouse")
            assert image.original_bytes == served
            assert image.info["miragic"]["result_url"].endswith(f"{NEW}?expires=2&signature=bb")
        else:
            with pytest.raises(DownloadError, match=r"^result download answered 403") as caught:
                c.generate("a lighthouse")
            assert caught.value.job_id == JOB_ID
        server = api.server
        assert server.count("GET", OLD) == 1
        assert server.count("GET", NEW) == 1
        assert server.count("GET", "/files/third.png") == 0  # refreshed once, not twice
        assert server.count("GET", "/api/v1/image/jobs/") == 2
        assert server.count("POST", "/api/v1/image/generate") == 1
