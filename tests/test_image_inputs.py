"""Image-to-image from what the user holds: results, job ids, local files, bytes, PIL images.

Local pictures go through a loopback uploader (a small HTTP server on 127.0.0.1 that stores
what it is sent and serves it back); the emulator fetches ``kontext`` inputs from loopback
only, and its job result is the transform of exactly the uploaded picture.
"""

from __future__ import annotations

import asyncio
import io
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from PIL import Image

import miragic_nb
from miragic_nb._core.errors import InvalidRequestError
from miragic_nb._core.images import GeneratedImage
from miragic_nb._core.provenance import METADATA_KEY
from miragic_nb._engine import image_inputs
from miragic_nb._panel.panel import Panel
from miragic_nb.client import Client
from miragic_nb.emulator import Emulator
from miragic_nb.emulator.render import transform_image
from tests.conftest import FAST_POLLS
from tests.loopback import loopback_server
from tests.panel_fixtures import STATUS, panel, until

if TYPE_CHECKING:
    from tests.magic_fixtures import Runner

pytest_plugins = ["tests.magic_fixtures"]
__all__ = ["panel"]  # the fixture, used by name

SEED = 7


@dataclass
class LoopbackUploader:
    """An uploader that POSTs to a loopback store and returns the URL serving the bytes back."""

    base_url: str
    stored: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    gets: list[str] = field(default_factory=list)
    calls: list[tuple[int, str]] = field(default_factory=list)

    def __call__(self, data: bytes, mimetype: str) -> str:
        self.calls.append((len(data), mimetype))
        url = f"{self.base_url}/uploads/{len(self.calls)}"
        post = urllib.request.Request(url, data=data, headers={"Content-Type": mimetype})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(post, timeout=5) as answer:
            assert answer.status == 200
        return url

    def data(self, url: str) -> bytes:
        return self.stored[url.removeprefix(self.base_url)][0]

    def answer(self, request: BaseHTTPRequestHandler, method: str) -> tuple[str, bytes]:
        """The store: a POST keeps the body under its path, a GET serves it back."""
        if method == "POST":
            body: bytes = getattr(request, "body", b"")
            self.stored[request.path] = (body, request.headers["Content-Type"])
            return "text/plain", b"stored"
        self.gets.append(request.path)
        stored, mimetype = self.stored.get(request.path, (b"", "text/plain"))
        return mimetype, stored


@pytest.fixture
def uploader() -> Iterator[LoopbackUploader]:
    store = LoopbackUploader("")
    with loopback_server(store.answer) as url:
        store.base_url = url
        yield store


@pytest.fixture(autouse=True)
def no_default_uploader() -> Iterator[None]:
    image_inputs.set_uploader(None)
    yield
    image_inputs.set_uploader(None)


#: Addresses sockets connected to while ``connections`` is recording (an audit hook: hooks
#: cannot be removed, so this one only records while asked to).
_connections: list[object] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect" and _connections is not None:
        _connections.append(args[1])


sys.addaudithook(_audit)


@pytest.fixture
def connections() -> Iterator[list[object]]:
    global _connections
    _connections = []
    try:
        yield _connections
    finally:
        _connections = None


def picture(color: str = "teal", size: tuple[int, int] = (300, 200)) -> Image.Image:
    image = Image.new("RGB", size, color)
    image.paste(Image.new("RGB", (size[0] // 3, size[1] // 3), "orange"), (20, 20))
    return image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def source_image(client: Client) -> GeneratedImage:
    return client.generate("a source picture", width=256, height=256, seed=1, reuse=False)


def edit(client: Client, image_url: object) -> GeneratedImage:
    return client.generate(
        "make it winter", model="kontext", width=256, height=256, seed=SEED, image_url=image_url
    )


def wait_until_expired(url: str) -> None:
    expires = image_inputs.url_expires_at(url)
    assert expires is not None
    time.sleep(max(0.0, expires - time.time()) + 0.05)


# -- results and jobs ------------------------------------------------------------------------


def test_a_result_is_sent_as_its_result_url(client: Client, emulator: Emulator) -> None:
    source = source_image(client)
    result = edit(client, source)
    sent = emulator.jobs[result.metadata["job_id"]].form["image_url"]
    assert sent == source.metadata["result_url"]
    assert result.metadata["image_url"] == sent
    # The emulator fetched the source result and edited it: the transform of those bytes.
    assert result.original_bytes == transform_image(
        source.original_bytes, "make it winter", "kontext", SEED, 256, 256
    )


def test_a_job_id_or_job_is_re_read_for_its_result_url(client: Client, emulator: Emulator) -> None:
    source = source_image(client)
    job_id = source.metadata["job_id"]
    emulator.clear_requests()
    by_id = edit(client, job_id)
    assert emulator.count("GET", STATUS + job_id) == 1  # the id's result URL, read once
    job = client.submit("another edit", model="kontext", image_url=client.get_job(job_id))
    for made in (by_id.metadata["job_id"], job.id):
        assert emulator.jobs[made].form["image_url"] == source.metadata["result_url"]


def test_an_expired_result_url_is_replaced_by_a_fresh_one(
    client: Client, emulator: Emulator
) -> None:
    emulator.faults.url_ttl = 1.0
    source = source_image(client)
    old_url = source.metadata["result_url"]
    wait_until_expired(old_url)
    emulator.faults.url_ttl = 600  # URLs minted from now on stay valid
    result = edit(client, source)  # the old URL would fail the job: the emulator gets a 403
    sent = emulator.jobs[result.metadata["job_id"]].form["image_url"]
    assert sent != old_url
    assert sent.split("?")[0] == old_url.split("?")[0]
    assert result.original_bytes == transform_image(
        source.original_bytes, "make it winter", "kontext", SEED, 256, 256
    )


def test_a_result_url_without_a_written_expiry_is_checked_with_its_host(
    client: Client, emulator: Emulator
) -> None:
    source = source_image(client)
    job_id, url = source.metadata["job_id"], source.metadata["result_url"]
    emulator.clear_requests()
    assert edit(client, source).metadata["image_url"] == url  # the host still serves it
    assert emulator.count("HEAD", url.split(emulator.url)[1]) == 1
    assert emulator.count("GET", STATUS + job_id) == 0
    # Signed from now on: the URL the result holds has no signature, so its host refuses it.
    emulator.faults.url_ttl = 600
    emulator.clear_requests()
    sent = edit(client, source).metadata["image_url"]
    assert emulator.count("GET", STATUS + job_id) == 1
    assert sent != url
    assert image_inputs.url_expires_at(sent) is not None


def test_expiry_is_read_from_emulator_and_s3_signed_urls() -> None:
    assert image_inputs.url_expires_at("http://h/f.jpg?expires=1700000000123&signature=ab") == (
        1700000000.123
    )
    s3 = "https://b.s3.amazonaws.com/k.png?X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600&X-Amz-Signature=x"
    assert image_inputs.url_expires_at(s3) == 1704067200 + 3600
    assert image_inputs.url_expires_at("https://example.com/plain.png") is None


# -- local pictures through the uploader -------------------------------------------------------


def test_local_file_bytes_and_pil_image_are_uploaded_once_each(
    tmp_path: Path, emulator: Emulator, uploader: LoopbackUploader
) -> None:
    jpeg = io.BytesIO()
    picture("navy").save(jpeg, "JPEG", quality=90)
    path = tmp_path / "holiday photo.jpg"
    path.write_bytes(jpeg.getvalue())
    inputs: list[tuple[object, bytes | None, str]] = [
        (path, jpeg.getvalue(), "image/jpeg"),
        (str(path), jpeg.getvalue(), "image/jpeg"),
        (png_bytes(picture("maroon")), png_bytes(picture("maroon")), "image/png"),
        (picture("olive"), None, "image/png"),  # someone else's PIL image: sent as PNG
    ]
    with Client(
        api_key=emulator.api_key,
        base_url=emulator.url,
        poll_schedule=FAST_POLLS,
        timeout=20,
        uploader=uploader,
    ) as client:
        for number, (value, expected, mimetype) in enumerate(inputs, start=1):
            result = edit(client, value)
            assert len(uploader.calls) == number  # one upload per input, whatever the retries
            assert uploader.calls[-1][1] == mimetype
            url = f"{uploader.base_url}/uploads/{number}"
            assert emulator.jobs[result.metadata["job_id"]].form["image_url"] == url
            assert result.metadata["image_url"] == url  # the URL, never the bytes
            assert result.display_bundle()[1][METADATA_KEY]["image_url"] == url  # the output's
            uploaded = uploader.data(url)
            if expected is not None:
                assert uploaded == expected
            else:
                assert isinstance(value, Image.Image)
                assert Image.open(io.BytesIO(uploaded)).tobytes() == value.tobytes()
            assert result.original_bytes == transform_image(
                uploaded, "make it winter", "kontext", SEED, 256, 256
            )
    assert len(uploader.gets) == len(inputs)  # each upload fetched once, by the emulator


def test_set_uploader_serves_clients_without_their_own(
    client: Client, emulator: Emulator, uploader: LoopbackUploader
) -> None:
    miragic_nb.set_uploader(uploader)
    result = edit(client, png_bytes(picture()))
    assert len(uploader.calls) == 1
    assert result.metadata["image_url"].startswith(uploader.base_url)


@pytest.mark.parametrize("kind", ["path", "bytes", "pil", "edited result"])
def test_without_an_uploader_nothing_is_sent_and_one_line_says_why(
    kind: str,
    tmp_path: Path,
    client: Client,
    emulator: Emulator,
    uploader: LoopbackUploader,
    connections: list[object],
) -> None:
    path = tmp_path / "in.png"
    path.write_bytes(png_bytes(picture()))
    value: object = {"path": path, "bytes": path.read_bytes(), "pil": picture()}.get(kind)
    if value is None:
        connections.clear()  # making the result below connects, of course
        source = source_image(client)
        source.putpixel((0, 0), (1, 2, 3))  # edited in place: no longer the server's picture
        value = source
        emulator.clear_requests()
        connections.clear()
    with pytest.raises(InvalidRequestError) as caught:
        edit(client, value)
    message = str(caught.value)
    assert "\n" not in message
    for advice in ("public URL", "set_uploader", "uploader="):
        assert advice in message
    assert emulator.requests == []
    assert uploader.gets == []
    assert uploader.stored == {}
    assert connections == []  # no socket opened at all


def test_a_wrong_model_is_refused_before_anything_is_uploaded(
    emulator: Emulator, uploader: LoopbackUploader
) -> None:
    with Client(api_key=emulator.api_key, base_url=emulator.url, uploader=uploader) as client:
        with pytest.raises(InvalidRequestError, match="works only with model 'kontext'"):
            client.generate("x", model="flux", image_url=png_bytes(picture()))
    assert uploader.calls == []
    assert emulator.requests == []


def test_a_missing_file_or_a_non_picture_is_refused_before_anything_is_sent(
    tmp_path: Path, client: Client, emulator: Emulator, uploader: LoopbackUploader
) -> None:
    miragic_nb.set_uploader(uploader)
    (tmp_path / "notes.txt").write_text("not a picture")
    with pytest.raises(InvalidRequestError, match="no file"):
        edit(client, str(tmp_path / "missing.png"))
    with pytest.raises(InvalidRequestError, match="cannot be read as a picture"):
        edit(client, tmp_path / "notes.txt")
    assert uploader.calls == []
    assert emulator.requests == []


# -- the magic ---------------------------------------------------------------------------------


@pytest.mark.parametrize("syntax", ["{t_source}", "$t_source", "t_source"])
def test_the_magic_takes_a_held_result(
    syntax: str, run: Runner, ip: InteractiveShell, api: Emulator
) -> None:
    first = run("%%miragic --size 256x256 -o t_source\nsource picture")
    assert first.error is None, first.text
    source = ip.user_ns["t_source"]
    cell = run(f"%%miragic -m kontext --size 256x256 --image-url {syntax}\nmake it winter")
    assert cell.error is None, cell.text
    result = ip.user_ns["_"]
    assert api.jobs[result.metadata["job_id"]].form["image_url"] == source.metadata["result_url"]


def test_the_magic_uploads_a_local_file_once_for_all_its_jobs(
    tmp_path: Path, run: Runner, ip: InteractiveShell, api: Emulator, uploader: LoopbackUploader
) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(png_bytes(picture()))
    cell = run(f"%%miragic -m kontext --size 256x256 --n 2 --image-url {path}\nmake it winter")
    assert cell.error is not None
    assert "set_uploader" in str(cell.error)
    assert api.requests == []  # no uploader yet: nothing sent
    miragic_nb.set_uploader(uploader)
    cell = run(f"%%miragic -m kontext --size 256x256 --n 2 --image-url {path}\nmake it winter")
    assert cell.error is None, cell.text
    assert len(uploader.calls) == 1
    forms = [job.form for job in api.jobs.values()]
    assert [form["image_url"] for form in forms] == [f"{uploader.base_url}/uploads/1"] * 2


# -- the panel ---------------------------------------------------------------------------------


def sent_by_panel(panel: Panel, emulator: Emulator) -> str:
    """Press Generate, wait for the result, and return the image_url its job was sent."""

    async def scenario() -> None:
        panel.generate_button.click()
        await until(lambda: panel.image is not None, limit=15)

    asyncio.run(scenario())
    assert panel.image is not None
    return emulator.jobs[panel.image.metadata["job_id"]].form["image_url"]


def test_the_panel_field_takes_a_held_result(
    ip: InteractiveShell, panel: Panel, client: Client, emulator: Emulator
) -> None:
    source = source_image(client)
    ip.user_ns["t_held"] = source
    panel.prompt.value = "make it winter"
    panel.model.value = "kontext"
    panel.image_url.value = "{t_held}"
    assert sent_by_panel(panel, emulator) == source.metadata["result_url"]


def test_the_panel_refreshes_an_expired_result_it_was_given(
    panel: Panel, client: Client, emulator: Emulator
) -> None:
    emulator.faults.url_ttl = 1.0
    source = source_image(client)
    panel.use_as_input(source)
    panel.prompt.value = "make it winter"
    old_url = panel.image_url.value
    wait_until_expired(old_url)
    emulator.faults.url_ttl = 600
    sent = sent_by_panel(panel, emulator)
    assert sent != old_url
    assert sent.split("?")[0] == old_url.split("?")[0]


def test_the_panel_without_an_uploader_says_why_and_sends_nothing(
    tmp_path: Path, panel: Panel, emulator: Emulator
) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(png_bytes(picture()))
    panel.prompt.value = "make it winter"
    panel.model.value = "kontext"
    panel.image_url.value = str(path)
    assert panel.generate() is None
    assert "set_uploader" in panel.errors["image_url"].value
    assert "Nothing was sent" in panel.status.value
    assert emulator.requests == []
