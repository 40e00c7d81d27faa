"""The client against hand-written hostile and broken servers (never our own emulator).

Each test names the defect it proves fixed; each failed on the client before the fix.
"""

from __future__ import annotations

import ipaddress
import math
import os
import socket
import stat
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import EpsImagePlugin

from miragic_nb import Client, GeneratedImage, Job
from miragic_nb._core.errors import (
    APIConnectionError,
    DownloadError,
    JobFailedError,
    JobTimeoutError,
    MiragicError,
)
from miragic_nb._core.request import GenerationRequest
from miragic_nb._core.states import ERROR, FAILED, PENDING, TIMEOUT
from miragic_nb._store.history import History
from tests.conftest import FAST_POLLS
from tests.hostile_servers import (
    JOB_ID,
    RESULT_PATH,
    Answer,
    Scripted,
    ScriptedApi,
    drip,
    gzip_json_answer,
    http_answer,
    image_bytes,
    json_answer,
    status_answer,
    status_record,
)

KEY = "hostile-test-key-0123"
OTHER_JOB = "job-bbbb-0002"


def hostile_client(api: ScriptedApi, **options: Any) -> Client:
    options.setdefault("timeout", 10.0)
    return Client(api_key=KEY, base_url=api.url, poll_schedule=FAST_POLLS, **options)


def history_of(client: Client) -> History:
    assert client.history is not None
    return client.history


def assert_one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text
    assert len(text) < 250, len(text)
    return text


# -- audit hooks: watch what the process does, without replacing any of it -----------------

_watch: dict[str, list[Any]] = {}


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "subprocess.Popen" and "popen" in _watch:
        _watch["popen"].append(args[1])
    if event == "socket.connect" and "connect" in _watch:
        address = args[1]
        host = address[0] if isinstance(address, tuple) else None
        try:
            loopback = host is not None and ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            loopback = False
        if not loopback and isinstance(host, str):
            # Tests talk to 127.0.0.1 only: refuse anything else before a packet leaves.
            _watch["connect"].append(host)
            raise PermissionError(f"test guard: no connection to {host}")


sys.addaudithook(_audit)


def _watching(kind: str) -> Iterator[list[Any]]:
    _watch[kind] = []
    try:
        yield _watch[kind]
    finally:
        del _watch[kind]


@pytest.fixture
def popen_calls() -> Iterator[list[Any]]:
    """Every subprocess the test starts."""
    yield from _watching("popen")


@pytest.fixture
def outside_connects() -> Iterator[list[Any]]:
    """Every connection the test tries to anywhere but loopback (each one refused)."""
    yield from _watching("connect")


# -- 1. a status answer that names another job ----------------------------------------------


def test_a_status_answer_naming_another_job_never_touches_its_record() -> None:
    other_request = GenerationRequest("the other job's prompt")
    with ScriptedApi(statuses=[status_answer(OTHER_JOB)]) as api:
        with hostile_client(api) as client:
            history = history_of(client)
            history.record_created(OTHER_JOB, other_request, base_url=api.url)
            with pytest.raises(JobTimeoutError) as caught:
                client.generate("a lighthouse", timeout=1.5)
            assert api.server.count("GET", RESULT_PATH) == 0
    error = caught.value
    assert error.job_id == JOB_ID
    assert "names another job (job-bbbb-0002)" in assert_one_line(error)
    other = history.get(OTHER_JOB)
    assert other is not None
    assert (other.status, other.path) == (PENDING, None)
    mine = history.get(JOB_ID)
    assert mine is not None
    assert mine.status == TIMEOUT


def test_a_stray_answer_for_another_job_is_read_again() -> None:
    with ScriptedApi(statuses=[status_answer(OTHER_JOB), status_answer(JOB_ID)]) as api:
        with hostile_client(api) as client:
            image = client.generate("a lighthouse")
    assert image.metadata["job_id"] == JOB_ID
    assert history_of(client).get(OTHER_JOB) is None


# -- 3. only JPEG, PNG, WEBP and GIF are decoded; nothing is ever run ------------------------

EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
    b"0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n"
)


@pytest.fixture
def fake_ghostscript(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``gs`` first on PATH that leaves a marker file if anything runs it."""
    marker = tmp_path / "ghostscript-ran"
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "gs"
    script.write_text(f"#!/bin/sh\ntouch '{marker}'\necho 10.0\nexit 0\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
    # Pillow remembers whether it found Ghostscript; make it look again, on our PATH.
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)
    return marker


@pytest.mark.parametrize("fmt", ["EPS", "BMP", "TIFF", "ICO", "PPM", "DDS"])
def test_only_jpeg_png_webp_and_gif_results_are_decoded(
    fmt: str, fake_ghostscript: Path, popen_calls: list[Any]
) -> None:
    body = EPS if fmt == "EPS" else image_bytes(fmt, (16, 16))
    files = {RESULT_PATH: http_answer(200, body, headers=[("Content-Type", "image/x-any")])}
    with ScriptedApi(files=files) as api:
        with hostile_client(api) as client:
            with pytest.raises(DownloadError) as caught:
                client.generate("a lighthouse")
    assert caught.value.job_id == JOB_ID
    assert "not JPEG/PNG/GIF/WEBP" in assert_one_line(caught.value)
    assert not fake_ghostscript.exists()
    assert popen_calls == []
    record = history_of(client).get(JOB_ID)
    assert record is not None
    assert record.status == ERROR


# -- 7. a create answer with a job id always yields a recorded job ---------------------------


@pytest.mark.parametrize(
    ("job_id", "extra"),
    [
        (JOB_ID, b'"createdAt": Infinity'),
        (JOB_ID, b'"createdAt": 1e20'),
        (JOB_ID, b'"createdAt": -1e13'),
        (JOB_ID, b'"createdAt": "1e400"'),
        (JOB_ID, b'"createdAt": ' + b"9" * 400),
        (12345, b'"createdAt": "2026-01-01T00:00:00Z"'),
    ],
    ids=["Infinity", "1e20", "-1e13", "string-1e400", "400-digits", "numeric-jobId"],
)
def test_a_create_answer_with_a_job_id_is_always_recorded(job_id: Any, extra: bytes) -> None:
    create = json_answer(
        b'{"success": true, "data": {"jobId": %s, "status": "PENDING", %s}}'
        % (str(job_id).encode() if isinstance(job_id, int) else b'"%s"' % job_id.encode(), extra)
    )
    with ScriptedApi(create=create, statuses=[status_answer(job_id)]) as api:
        with hostile_client(api) as client:
            image = client.generate("a lighthouse")
    assert image.metadata["job_id"] == str(job_id)
    record = history_of(client).get(str(job_id))
    assert record is not None
    assert record.status == "COMPLETED"


# -- 8. a wall-clock deadline on every request -----------------------------------------------


def _dripping(byte: bytes) -> Answer:
    """Headers that promise 100 kB, then one byte every 0.2 s for as long as anyone listens."""
    return drip(http_answer(200, b"", headers=[("Content-Length", "100000")]), byte=byte)


@pytest.mark.parametrize("where", ["status", "result"])
def test_a_dripping_answer_cannot_outlast_the_deadline(where: str) -> None:
    if where == "status":
        api = ScriptedApi(statuses=[lambda: _dripping(b" ")])
    else:
        api = ScriptedApi(files={RESULT_PATH: lambda: _dripping(b"\0")})
    with api, hostile_client(api, read_timeout=2) as client:
        started = time.monotonic()
        with pytest.raises(JobTimeoutError) as caught:
            client.generate("a lighthouse", timeout=2)
        elapsed = time.monotonic() - started
    assert elapsed < 2 + 6, elapsed  # generous: the deadline plus slack for a slow machine
    assert caught.value.job_id == JOB_ID
    assert_one_line(caught.value)
    record = history_of(client).get(JOB_ID)
    assert record is not None
    assert record.status == TIMEOUT


def test_no_job_is_created_once_the_deadline_has_passed() -> None:
    with ScriptedApi() as api, hostile_client(api) as client:
        with pytest.raises(APIConnectionError) as caught:
            client.generate("a lighthouse", timeout=1e-9)
        assert api.server.requests == []
    assert "no time was left to send a request" in assert_one_line(caught.value)
    assert "may have been created" not in str(caught.value)


def test_a_redirect_whose_own_body_drips_is_followed_at_once() -> None:
    moved = http_answer(
        302, b"", headers=[("Location", "/files/real.png"), ("Content-Length", "100000")]
    )
    data = image_bytes("PNG")
    files: dict[str, Scripted] = {
        RESULT_PATH: lambda: drip(moved),
        "/files/real.png": http_answer(200, data),
    }
    with ScriptedApi(files=files) as api, hostile_client(api) as client:
        image = client.generate("a lighthouse", timeout=3)
    assert image.original_bytes == data


# -- 10. Retry-After on status reads is capped and bounded by the time left ------------------


@pytest.mark.parametrize(
    ("retry_after", "timeout"), [("999999999", 60.0), ("inf", math.inf)], ids=["huge", "inf"]
)
def test_a_huge_retry_after_on_a_status_read_is_capped(retry_after: str, timeout: float) -> None:
    too_many = http_answer(429, b"slow down", headers=[("Retry-After", retry_after)])
    with ScriptedApi(statuses=[too_many, status_answer()]) as api:
        with hostile_client(api, timeout=timeout) as client:
            started = time.monotonic()
            image = client.generate("a lighthouse")
            elapsed = time.monotonic() - started
    assert image.metadata["job_id"] == JOB_ID
    assert elapsed < 20, elapsed  # the cap is a few seconds, not the server's word


def test_retry_after_never_outlasts_the_deadline() -> None:
    too_many = http_answer(429, b"slow down", headers=[("Retry-After", "999999999")])
    with ScriptedApi(statuses=[too_many]) as api:
        with hostile_client(api) as client:
            started = time.monotonic()
            with pytest.raises(JobTimeoutError):
                client.generate("a lighthouse", timeout=2)
            elapsed = time.monotonic() - started
    assert elapsed < 2 + 6, elapsed


# -- 11. API answers are capped at 1 MB after decompression -----------------------------------


def test_an_oversized_gzip_status_answer_is_a_failed_read() -> None:
    # 64 MB of JSON in about 64 kB of gzip; it says FAILED, the next answer says COMPLETED.
    head = b'{"success": true, "data": {"id": "%s", "status": "FAILED", "pad": "' % JOB_ID.encode()
    bomb = gzip_json_answer([head, *(b"A" * (1 << 20) for _ in range(64)), b'"}}'])
    with ScriptedApi(statuses=[bomb, status_answer()]) as api:
        with hostile_client(api) as client:
            tracemalloc.start()
            try:
                image = client.generate("a lighthouse")
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    assert image.metadata["job_id"] == JOB_ID
    assert peak < 24 * 1024 * 1024, f"{peak:,} bytes at the peak"


# -- 12. only MiragicError leaves the client, and the history says what happened -------------


def test_a_deeply_nested_status_answer_is_a_failed_read() -> None:
    nested = json_answer(b"[" * 200_000 + b"]" * 200_000)
    with ScriptedApi(statuses=[nested, status_answer()]) as api:
        with hostile_client(api) as client:
            image = client.generate("a lighthouse")
    assert image.metadata["job_id"] == JOB_ID


def test_odd_recorded_parameters_do_not_break_a_resume() -> None:
    params = {"prompt": "a lighthouse", "width": "²", "height": "٣", "seed": "²", "model": "flux"}
    completed = status_answer(parameters=params, metadata={"processingTimeMs": 1200})
    with ScriptedApi(statuses=[completed]) as api:
        with hostile_client(api) as client:
            image = client.resume(JOB_ID)
    assert (image.metadata["width"], image.metadata["height"], image.metadata["seed"]) == (
        1024,
        1024,
        None,
    )


def test_an_odd_content_length_on_the_result_is_ignored() -> None:
    data = image_bytes("PNG")
    raw = http_answer(200, data, headers=[("Content-Length", "²")])
    with ScriptedApi(files={RESULT_PATH: raw}) as api:
        with hostile_client(api) as client:
            image = client.generate("a lighthouse")
    assert image.original_bytes == data


def test_a_history_that_cannot_store_the_error_keeps_the_job_failed_error() -> None:
    # A lone surrogate cannot be written as UTF-8; the job's own error must still come out.
    failed = json_answer(
        b'{"success": true, "data": {"id": "%s", "status": "FAILED", '
        b'"errorMessage": "broke \\ud800 here"}}' % JOB_ID.encode()
    )
    with ScriptedApi(statuses=[failed]) as api:
        with hostile_client(api) as client:
            with pytest.raises(JobFailedError) as caught:
                client.generate("a lighthouse")
    assert caught.value.job_id == JOB_ID


def test_an_unforeseen_failure_is_a_miragic_error_and_recorded() -> None:
    def explode(job: Job) -> None:
        raise ZeroDivisionError("a defect somewhere")

    with ScriptedApi() as api:
        with hostile_client(api) as client:
            with pytest.raises(MiragicError) as caught:
                client.generate("a lighthouse", on_progress=explode)
    assert caught.value.job_id == JOB_ID
    assert "ZeroDivisionError" in assert_one_line(caught.value)
    record = history_of(client).get(JOB_ID)
    assert record is not None
    assert record.status == ERROR


# -- smaller defects -----------------------------------------------------------------------


def test_a_huge_error_message_is_one_short_line() -> None:
    huge = "disk full " * 100_000  # 1 MB
    with ScriptedApi(statuses=[status_answer(status="FAILED", errorMessage=huge)]) as api:
        with hostile_client(api) as client:
            with pytest.raises(JobFailedError) as caught:
                client.generate("a lighthouse")
    assert assert_one_line(caught.value).startswith(f"job {JOB_ID} failed: disk full disk full")
    record = history_of(client).get(JOB_ID)
    assert record is not None
    assert record.status == FAILED
    assert record.error_message is not None
    assert len(record.error_message) <= 300


def test_non_finite_progress_is_no_progress() -> None:
    pending = [
        json_answer(
            b'{"success": true, "data": {"id": "%s", "status": "PENDING", "progress": %s}}'
            % (JOB_ID.encode(), value)
        )
        for value in (b"NaN", b"Infinity", b'"nan"', b"42")
    ]
    seen: list[float | None] = []
    with ScriptedApi(statuses=[*pending, status_answer()]) as api:
        with hostile_client(api) as client:
            client.generate("a lighthouse", on_progress=lambda job: seen.append(job.progress))
    assert seen == [None, None, None, 42.0, 100.0]


def test_a_non_image_result_is_not_echoed() -> None:
    body = b"SECRET-SESSION-TOKEN=abcdef0123456789 and more server bytes"
    with ScriptedApi(files={RESULT_PATH: http_answer(200, body)}) as api:
        with hostile_client(api) as client:
            with pytest.raises(DownloadError) as caught:
                client.generate("a lighthouse")
    text = assert_one_line(caught.value)
    assert "SECRET" not in text
    assert "not a decodable image" in text


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/x",
        "http://2852039166/latest/meta-data/",
        # Other spellings of 169.254.169.254 the HTTP library or the resolver decode.
        "http://%31%36%39.254.169.254/latest/meta-data/",
        "http://169.254.169.254./latest/meta-data/",
        "http://0251.0376.0251.0376/latest/meta-data/",
        "http://0xa9.0xfe.0xa9.0xfe/latest/meta-data/",
        "http://0xa9fea9fe/latest/meta-data/",
        "http://[::ffff:a9fe:a9fe]/latest/meta-data/",
        "http://[fe80::1%25eth0]/latest/meta-data/",
    ],
)
@pytest.mark.parametrize("how", ["direct", "redirect"])
def test_link_local_result_urls_are_refused(
    url: str, how: str, outside_connects: list[Any]
) -> None:
    if how == "direct":
        api = ScriptedApi(statuses=[status_answer(processedImageUrl=url)])
    else:
        moved = http_answer(302, b"", headers=[("Location", url)], reason="Found")
        api = ScriptedApi(files={RESULT_PATH: moved})
    with api, hostile_client(api) as client:
        with pytest.raises(DownloadError) as caught:
            client.generate("a lighthouse")
    assert "link-local address" in assert_one_line(caught.value)
    assert caught.value.job_id == JOB_ID
    assert outside_connects == []


#: Test host names and what the (patched) resolver answers for them.
_NAMES = {
    "metadata.test": ["169.254.169.254"],
    "metadata6.test": ["fe80::a9fe:a9fe"],
    # A name with one harmless answer and one link-local: refused all the same.
    "mixed.test": ["127.0.0.1", "169.254.169.254"],
}


@pytest.fixture
def link_local_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """The resolver answers link-local addresses for ``_NAMES`` (no network needed); every
    other name resolves as usual."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in _NAMES:
            return [
                (
                    socket.AF_INET6 if ":" in address else socket.AF_INET,
                    socket.SOCK_STREAM,
                    6,
                    "",
                    (address, port, 0, 0) if ":" in address else (address, port),
                )
                for address in _NAMES[host]
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize("name", sorted(_NAMES))
@pytest.mark.parametrize("how", ["direct", "redirect", "head"])
def test_names_that_resolve_to_link_local_are_never_connected_to(
    name: str, how: str, link_local_names: None, outside_connects: list[Any]
) -> None:
    url = f"http://{name}/latest/meta-data/"
    moved = http_answer(302, b"", headers=[("Location", url)], reason="Found")
    if how == "direct":
        api = ScriptedApi(statuses=[status_answer(processedImageUrl=url)])
    else:
        api = ScriptedApi(files={RESULT_PATH: moved})
    with api, hostile_client(api) as client:
        if how == "head":
            # Checking whether a result URL is gone follows redirects too.
            assert client.result_url_refused(api.url + RESULT_PATH) is False
        else:
            with pytest.raises(DownloadError) as caught:
                client.generate("a lighthouse")
            assert "link-local address" in assert_one_line(caught.value)
            assert caught.value.job_id == JOB_ID
    # Not one connection attempt to a link-local address (the guard records every one).
    assert outside_connects == []


def test_userinfo_in_a_url_is_never_stored() -> None:
    def completed() -> list[bytes]:
        url = f"http://user:hunter2@{host}{RESULT_PATH}"
        return [json_answer(status_record(processedImageUrl=url))]

    api = ScriptedApi(statuses=[completed])
    host = api.url.removeprefix("http://")
    source = f"http://someone:swordfish@{host}/files/input.png"
    with api, hostile_client(api) as client:
        image = client.generate("the same, in winter", model="kontext", image_url=source)
    assert isinstance(image, GeneratedImage)
    assert image.metadata["result_url"] == api.url + RESULT_PATH
    assert image.metadata["image_url"] == api.url + "/files/input.png"
    # The API itself was sent the input URL as given: it is the one that fetches it.
    (create,) = [r for r in api.server.requests if r.method == "POST"]
    assert b"swordfish" in create.body
    record = history_of(client).get(JOB_ID)
    assert record is not None
    assert (record.result_url, record.image_url) == (
        api.url + RESULT_PATH,
        api.url + "/files/input.png",
    )
    assert record.path is not None
    # The image file carries its metadata too.
    stored = Path(record.path).read_bytes()
    assert b"hunter2" not in stored
    assert b"swordfish" not in stored
