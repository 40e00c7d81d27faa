"""The edges of the functions behind the guarantees table, where mutation testing found them
unwatched (``docs/mutation.md``): the download checks, the origin-scoped key, and the create
request and its retries. Each test states one edge exactly; the servers are real loopback
sockets (``tests/hostile_servers.py``) wherever bytes cross the wire.
"""

from __future__ import annotations

import pickle
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any

import pytest
import requests
import urllib3
from PIL import Image

from miragic_nb import Client
from miragic_nb._api import transport
from miragic_nb._api.miragic import CREATE_PATH, MiragicAPI
from miragic_nb._core.config import Secret
from miragic_nb._core.context import caller_paces_creates, deadline
from miragic_nb._core.errors import DownloadError
from miragic_nb._core.images import MAX_PIXELS, decode
from miragic_nb._core.request import GenerationRequest
from miragic_nb._core.states import JobState
from miragic_nb._engine.engine import CancelledBeforeStart, JobHandle
from miragic_nb.emulator import Emulator
from tests.conftest import FAST_POLLS
from tests.hostile_servers import (
    CREATE,
    STATUS,
    Answer,
    HostileServer,
    Request,
    create_answer,
    drip,
    http_answer,
    image_bytes,
    status_answer,
)

KEY = "edge-key-0123456789"

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


# -- no create after a cancel ----------------------------------------------------------------


def test_a_job_cancelled_before_its_create_sends_nothing(
    client: Client, emulator: Emulator
) -> None:
    # The engine's own check (JobHandle.begin_send, under the cancel lock), without the
    # worker queue that also drops jobs which never started.
    handle = JobHandle(GenerationRequest("cancelled before it was sent"))
    assert handle.cancel() is False  # nothing was sent yet
    with pytest.raises(CancelledBeforeStart):
        client.engine.run(handle)
    assert emulator.count("POST", CREATE_PATH) == 0
    assert handle.state is JobState.CANCELLED
    assert handle.sent is False


# -- the key: never shown ----------------------------------------------------------------------


def test_a_clients_repr_says_whether_a_key_is_set_and_nothing_more(emulator: Emulator) -> None:
    with Client(api_key=emulator.api_key, base_url=emulator.url) as keyed:
        assert repr(keyed) == f"Client(base_url={emulator.url!r}, api_key=set)"
    with Client(base_url=emulator.url, history=False) as keyless:
        assert repr(keyless) == f"Client(base_url={emulator.url!r}, api_key=not set)"
    # As a traceback may show a client whose __init__ raised half-way.
    assert repr(Client.__new__(Client)) == "Client(base_url=None, api_key=not set)"


# -- the key: only to the API's origin ---------------------------------------------------------


def _api_with_a_redirected_result(result: Callable[[Request], Answer]) -> HostileServer:
    """The API on one loopback origin; its result URL ``/files/a`` redirects to ``/files/b``
    on the same origin, which ``result`` answers."""

    def route(request: Request) -> Answer:
        if request.method == "POST" and request.path == CREATE:
            return [create_answer()]
        if request.path.startswith(STATUS):
            return [status_answer(processedImageUrl="/files/a")]
        if request.path == "/files/a":
            return [http_answer(302, b"", headers=[("Location", "/files/b")], reason="Found")]
        return result(request)

    return HostileServer(route)


def _needs_the_key(request: Request) -> Answer:
    if request.headers.get("x-api-key") != KEY:
        return [http_answer(403, b"no key", reason="Forbidden")]
    return [http_answer(200, image_bytes("PNG"))]


@pytest.mark.parametrize("own_session", [False, True], ids=["client-session", "users-session"])
def test_a_redirect_within_the_apis_origin_keeps_the_key(own_session: bool) -> None:
    with _api_with_a_redirected_result(_needs_the_key) as api, requests.Session() as session:
        options: dict[str, Any] = {"session": session} if own_session else {}
        with Client(KEY, api.url, poll_schedule=FAST_POLLS, history=False, **options) as client:
            image = client.generate("a result behind a same-origin redirect", timeout=10)
    assert image.size == (64, 48)
    (final,) = [r for r in api.requests if r.path == "/files/b"]
    assert final.headers.get("x-api-key") == KEY


@pytest.mark.parametrize("own_session", [False, True], ids=["client-session", "users-session"])
def test_a_redirect_to_another_origin_drops_the_key(own_session: bool) -> None:
    with HostileServer(lambda request: [http_answer(200, image_bytes("PNG"))]) as other:

        def elsewhere(request: Request) -> Answer:
            location = f"{other.url}/files/c"
            return [http_answer(302, b"", headers=[("Location", location)], reason="Found")]

        with _api_with_a_redirected_result(elsewhere) as api, requests.Session() as session:
            options: dict[str, Any] = {"session": session} if own_session else {}
            with Client(KEY, api.url, poll_schedule=FAST_POLLS, history=False, **options) as c:
                c.generate("a result on another origin", timeout=10)
    assert [r.path for r in other.requests] == ["/files/c"]
    assert "x-api-key" not in other.requests[0].headers
    assert api.requests[-1].path == "/files/b"  # the last hop on the API's origin...
    assert api.requests[-1].headers.get("x-api-key") == KEY  # ...still had the key


# -- downloads: the size cap and the length check ----------------------------------------------


def _result_server(answer: Answer) -> HostileServer:
    return HostileServer(lambda request: list(answer))


def _fetch(url: str, *, max_bytes: int = 1000, seconds: float = 10.0) -> bytes:
    with requests.Session() as session, deadline(time.monotonic() + seconds):
        return transport.fetch_bytes(
            session, url + "/r.png", timing=(5.0, 5.0), max_bytes=max_bytes, job_id="job-1"
        )


def test_a_declared_length_over_the_cap_is_refused_before_the_body_is_read() -> None:
    with _result_server([http_answer(200, b"x" * 1001)]) as server:
        with pytest.raises(DownloadError) as caught:
            _fetch(server.url, max_bytes=1000)
    assert str(caught.value) == "result is 1,001 bytes, over the 1,000-byte cap (job job-1)"
    assert (caught.value.status_code, caught.value.job_id) == (200, "job-1")


def test_a_body_of_exactly_the_cap_is_accepted() -> None:
    with _result_server([http_answer(200, b"x" * 1000)]) as server:
        assert _fetch(server.url, max_bytes=1000) == b"x" * 1000


def test_an_undeclared_body_over_the_cap_is_cut_off() -> None:
    # No Content-Length: the body ends when the server closes, so the cap is counted.
    answer = http_answer(200, b"x" * 5000, content_length=False)
    with _result_server([answer]) as server:
        with pytest.raises(DownloadError) as caught:
            _fetch(server.url, max_bytes=1000)
    assert str(caught.value) == "result exceeds the 1,000-byte cap (job job-1)"
    assert (caught.value.status_code, caught.value.job_id) == (200, "job-1")


def test_an_undeclared_body_within_the_cap_is_read_whole() -> None:
    answer = http_answer(200, b"y" * 999, content_length=False)
    with _result_server([answer]) as server:
        assert _fetch(server.url) == b"y" * 999


def test_a_body_cut_short_is_a_transient_failure() -> None:
    # Content-Length says 2000, the server sends 1000 and closes: status 0 means "retry".
    answer = http_answer(200, b"z" * 1000, headers=[("Content-Length", "2000")])
    with _result_server([answer]) as server:
        with pytest.raises(DownloadError) as caught:
            _fetch(server.url, max_bytes=5000)
    assert str(caught.value).startswith("result download failed: IncompleteRead(")
    assert (caught.value.status_code, caught.value.job_id) == (0, "job-1")


def test_a_body_still_arriving_at_the_deadline_is_not_finished_in_time() -> None:
    head = http_answer(200, b"", headers=[("Content-Length", "100")])
    with HostileServer(lambda request: drip(head)) as server:
        with pytest.raises(DownloadError) as caught:
            _fetch(server.url, seconds=1.0)
    assert str(caught.value) == "result download did not finish in time (job job-1)"
    assert (caught.value.status_code, caught.value.job_id) == (0, "job-1")


# -- retries: bounded by the deadline ----------------------------------------------------------


def _answer_with(headers: dict[str, str]) -> Any:
    return urllib3.HTTPResponse(body=b"", headers=headers, status=429, preload_content=False)


def test_retry_after_zero_is_no_pause() -> None:
    retry = transport.create_retry()
    assert retry.get_retry_after(_answer_with({"Retry-After": "0"})) == 0.0
    assert retry.get_retry_after(_answer_with({})) is None


def test_retry_after_is_capped_by_the_time_left() -> None:
    with deadline(time.monotonic() + 3.0):
        pause = transport.create_retry().get_retry_after(_answer_with({"Retry-After": "25"}))
    assert pause is not None
    assert 2.0 < pause <= 3.0


def test_retry_after_is_capped_for_status_reads_and_for_creates() -> None:
    huge = _answer_with({"Retry-After": "3600"})
    assert transport.read_retry().get_retry_after(huge) == transport.MAX_READ_RETRY_AFTER_S
    assert transport.create_retry().get_retry_after(huge) == transport.MAX_CREATE_RETRY_AFTER_S


def test_a_first_retry_has_no_backoff() -> None:
    assert transport.create_retry().get_backoff_time() == 0.0


def test_retries_are_exhausted_once_the_deadline_has_passed_and_not_before() -> None:
    with deadline(time.monotonic() - 0.1):
        assert transport.create_retry().is_exhausted()
    # Not exhausted while time is left, even under a second (a stalled test only makes
    # this deadline pass sooner, never later).
    with deadline(time.monotonic() + 0.9):
        assert not transport.read_retry().is_exhausted()


def test_a_429_on_create_is_not_retried_while_the_caller_paces_creates() -> None:
    retry = transport.create_retry()
    assert retry.is_retry("POST", 429, has_retry_after=True)
    assert not retry.is_retry("POST", 503, has_retry_after=True)
    with caller_paces_creates():
        assert not retry.is_retry("POST", 429, has_retry_after=True)
    assert retry.is_retry("POST", 429, has_retry_after=True)


# -- never sent twice: which failures certainly reached no server ------------------------------


def test_the_error_chain_follows_args_reason_cause_and_context() -> None:
    root = ConnectionRefusedError(111, "Connection refused")
    by_args = OSError("outer", root)
    assert transport.error_chain(by_args) == [by_args, root]
    by_reason = urllib3.exceptions.MaxRetryError(None, "http://x", reason=root)  # type: ignore[arg-type]
    assert transport.error_chain(by_reason)[-1] is root
    caused = ValueError("outer")
    caused.__cause__ = root
    assert transport.error_chain(caused) == [caused, root]
    # ``raise ... from None`` only hides the context from tracebacks: it is still followed.
    suppressed = ValueError("while handling")
    suppressed.__context__ = root
    suppressed.__suppress_context__ = True
    assert transport.error_chain(suppressed) == [suppressed, root]
    both = ValueError("outer")
    both.__cause__, both.__context__ = root, KeyError("context")
    assert transport.error_chain(both) == [both, root]
    looped = OSError("a")
    looped.__cause__ = looped
    assert transport.error_chain(looped) == [looped]


def test_only_a_connection_that_never_opened_counts_as_never_sent() -> None:
    with requests.Session() as session:
        listener = HostileServer(lambda request: [])
        port = listener.url.rsplit(":", 1)[1]
        listener.close()  # nothing listens there any more: connection refused
        with pytest.raises(requests.ConnectionError) as refused:
            session.post(f"http://127.0.0.1:{port}/x", timeout=5)
    assert transport.never_connected(refused.value)
    assert transport.never_connected(requests.ConnectTimeout())
    assert not transport.never_connected(requests.ReadTimeout())
    assert not transport.never_connected(requests.ConnectionError("reset by peer"))


# -- the key's holders ---------------------------------------------------------------------------


def test_pickling_a_key_holder_says_why_in_full() -> None:
    with pytest.raises(TypeError) as caught:
        pickle.dumps(Secret("k-123"))
    assert str(caught.value) == (
        "Secret holds the Miragic API key, so it cannot be pickled: the pickle would hold the "
        "key in clear text. Make a new Client where it is needed (it reads MIRAGIC_API_KEY)"
    )


def test_secrets_are_equal_by_value_and_only_to_secrets() -> None:
    assert Secret("k-1") == Secret("k-1")
    assert Secret("k-1") != Secret("k-2")
    assert Secret("k-1") != "k-1"
    assert len({Secret("k-1"), Secret("k-1"), Secret("k-2")}) == 2


def test_every_key_holder_shows_a_fixed_mask(emulator: Emulator) -> None:
    secret = Secret("k-123")
    assert repr(secret) == str(secret) == "Secret('********')"
    assert repr(transport.HeaderSecret("k-123")) == "'********'"
    origin = ("http", "127.0.0.1", 80)
    assert repr(transport.ApiKeyAuth(secret, origin)) == "<API key auth (hidden)>"
    for key, shown in ((emulator.api_key, "set"), (None, "not set")):
        api = MiragicAPI(api_key=key, base_url=emulator.url)
        try:
            assert repr(api) == f"MiragicAPI(base_url={emulator.url!r}, api_key={shown})"
        finally:
            api.close()
    assert repr(MiragicAPI.__new__(MiragicAPI)) == "MiragicAPI(base_url=None, api_key=not set)"


# -- downloads: what a result host's answer means ------------------------------------------------


@pytest.mark.parametrize("status", [400, 404, 500])
def test_a_result_host_error_is_a_download_error_with_its_status(status: int) -> None:
    with _result_server([http_answer(status, b"<h1>no</h1>", reason="No")]) as server:
        with pytest.raises(DownloadError) as caught:
            _fetch(server.url)
    assert str(caught.value) == f"result download answered {status} (job job-1)"
    assert (caught.value.status_code, caught.value.job_id) == (status, "job-1")


def test_a_result_is_asked_for_as_an_image() -> None:
    with _result_server([http_answer(200, b"x" * 10)]) as server:
        _fetch(server.url)
    assert server.requests[0].headers.get("accept") == "image/*"


def test_a_result_host_that_never_answers_is_given_up_on_by_the_deadline() -> None:
    # It accepts the connection and says nothing (until the test server's own 30 s limit):
    # the per-attempt timeout, never longer than the time left, ends the wait.
    with HostileServer(lambda request: [60.0]) as server:
        with pytest.raises(DownloadError) as caught:
            _fetch(server.url, seconds=1.0)
    assert "timed out" in str(caught.value)
    assert caught.value.status_code == 0
