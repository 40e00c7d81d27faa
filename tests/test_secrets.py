"""The API key never leaves the API's origin and never shows up anywhere a user could share.

The key is a distinctive string, so a plain substring search finds it wherever it went: in a
request to another origin, in history files, in log records, in exception messages and
tracebacks (also with captured locals, as IPython's verbose mode prints them), in a repr, in
``%miragic config``, and in an executed notebook with its saved widget state.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from miragic_nb import Client, GenerationRequest, MiragicError
from miragic_nb.emulator import Emulator, Fault
from miragic_nb.history import History
from tests.conftest import FAST_POLLS

SECRET = "sk-live-SECRET-9f8e7d"


@pytest.fixture
def keyed() -> Iterator[Emulator]:
    """An emulator that accepts only SECRET."""
    with Emulator(api_key=SECRET, job_seconds=0.3) as emulator:
        yield emulator


@pytest.fixture
def client(keyed: Emulator) -> Iterator[Client]:
    with Client(SECRET, keyed.url, poll_schedule=FAST_POLLS, timeout=20) as made:
        yield made


def full_traceback(error: BaseException) -> str:
    """Everything a traceback can print: the plain form, then every frame's locals."""
    plain = "".join(traceback.format_exception(error))
    with_locals = traceback.TracebackException.from_exception(error, capture_locals=True)
    return plain + "".join(with_locals.format())


def _failures(keyed: Emulator, client: Client) -> Iterator[MiragicError]:
    """One error of each kind a keyed client can meet after sending the key."""
    keyed.faults.force_failure = True
    keyed.faults.failure_message = "rejected"
    with pytest.raises(MiragicError) as failed:
        client.generate("a failing job")
    yield failed.value  # JobFailedError
    keyed.faults.reset()
    keyed.faults.push("download", Fault.not_image(), times=None)
    with pytest.raises(MiragicError) as download:
        client.generate("a broken download")
    yield download.value  # DownloadError
    keyed.faults.reset()
    keyed.faults.never_finish = True
    with pytest.raises(MiragicError) as timeout:
        client.generate("a slow job", timeout=0.3)
    yield timeout.value  # JobTimeoutError
    keyed.faults.reset()
    keyed.faults.push("create", Fault.rate_limited(0.01), times=None)
    with pytest.raises(MiragicError) as limited:
        client.generate("rate limited")
    yield limited.value  # RateLimitError
    keyed.faults.reset()
    keyed.faults.push("create", Fault.http(503))
    with pytest.raises(MiragicError) as server:
        client.generate("server error")
    yield server.value  # APIError
    keyed.faults.push("create", Fault.slow(1.0))
    with Client(SECRET, keyed.url, read_timeout=0.2) as impatient:
        with pytest.raises(MiragicError) as unanswered:
            impatient.generate("no answer")
    yield unanswered.value  # APIConnectionError
    # The 401 path: our key, in our client, refused by a server that expects another.
    with Emulator(api_key="another-key") as wrong, Client(SECRET, wrong.url) as other:
        with pytest.raises(MiragicError) as refused:
            other.generate("wrong key")
    yield refused.value  # AuthenticationError


def test_key_never_reaches_another_origin(client: Client, keyed: Emulator) -> None:
    for settings in (
        {"result_url": "second_origin"},
        {"result_url": "link_only"},
        {"result_url": "absolute", "result_redirects": 3},
    ):
        keyed.faults.configure(**settings)
        client.generate("a cat", width=256, height=256)
    second = keyed.second_origin_requests
    assert len(second) >= 3
    assert all("X-API-Key" not in r.headers for r in second)
    assert all(SECRET not in repr(r) for r in second)
    # ...while every request to the API's own origin carried it.
    assert all(
        r.headers.get("X-API-Key") == SECRET for r in keyed.requests if r.path.startswith("/api/")
    )


def test_key_is_not_in_history_files(client: Client, keyed: Emulator) -> None:
    client.generate("kept", width=256, height=256, seed=1)
    for error in _failures(keyed, client):
        assert error  # each failure also writes its record
    home = Path(os.environ["MIRAGIC_HOME"])
    files = [path for path in home.rglob("*") if path.is_file()]
    # Records of completed, failed, timed-out and broken jobs, and a saved image.
    assert len([p for p in files if p.suffix == ".json"]) >= 4
    assert any(p.suffix == ".jpg" for p in files)
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    assert {r.status for r in History().records()} >= {"COMPLETED", "FAILED", "TIMEOUT", "ERROR"}


def test_key_is_not_in_any_log_record(
    client: Client, keyed: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # the root: miragic_nb, urllib3, requests, everything
    for name in ("miragic_nb", "urllib3"):
        caplog.set_level(logging.DEBUG, logger=name)
    keyed.faults.push("status", Fault.http(500), times=2)  # logged retries
    keyed.faults.push("download", Fault.reset())
    client.generate("logged", width=256, height=256)
    errors = list(_failures(keyed, client))
    assert len(errors) == 7
    names = {record.name.split(".")[0] for record in caplog.records}
    assert {"miragic_nb", "urllib3"} <= names  # both were really captured at DEBUG
    assert any(record.levelno == logging.DEBUG for record in caplog.records)
    for record in caplog.records:
        assert SECRET not in record.getMessage(), record.getMessage()
        assert SECRET not in repr(record.args)
    assert SECRET not in caplog.text


def test_key_is_not_in_errors_or_tracebacks(client: Client, keyed: Emulator) -> None:
    errors = list(_failures(keyed, client))
    kinds = {type(error).__name__ for error in errors}
    assert kinds == {
        "JobFailedError",
        "DownloadError",
        "JobTimeoutError",
        "RateLimitError",
        "APIError",
        "APIConnectionError",
        "AuthenticationError",
    }
    for error in errors:
        text = full_traceback(error)
        assert "client = Client(" in text or "self = Client(" in text  # locals were captured
        assert SECRET not in text, type(error).__name__
        assert SECRET not in str(error)
        assert SECRET not in repr(error)
        assert SECRET not in repr(vars(error))


def test_key_is_not_in_a_failed_constructor_traceback(keyed: Emulator) -> None:
    for bad in ({"base_url": "http://remote.example"}, {"timeout": -1}):
        with pytest.raises(MiragicError) as info:
            Client(SECRET, **bad)
        text = full_traceback(info.value)
        assert "api_key = Secret('********')" in text  # the argument, rebound at once
        assert SECRET not in text


def test_key_is_not_in_a_traceback_interrupted_mid_request(client: Client, keyed: Emulator) -> None:
    """Ctrl-C while a status read is on the wire: urllib3's frames hold the request headers."""
    keyed.faults.push("status", Fault.slow(2.0), times=None)
    main = threading.get_ident()
    timer = threading.Timer(0.6, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            client.run(GenerationRequest("interrupted"))
    finally:
        timer.cancel()
        keyed.faults.reset()
    text = full_traceback(info.value)
    assert "urllib3" in text  # interrupted inside the request, where the headers are
    assert "'X-API-Key': '********'" in text
    assert SECRET not in text


def test_key_is_not_in_reprs(client: Client, keyed: Emulator) -> None:
    image = client.generate("shown", width=256, height=256)
    job = client.get_job(image.metadata["job_id"])
    session = client._session  # the internals a debugger or a traceback could show
    for shown in (
        client,
        vars(client),
        session.__dict__,
        session.auth,
        job,
        job.raw,
        image,
        image.info,
        image.metadata,
        History().records(),
    ):
        assert SECRET not in repr(shown)
        assert SECRET not in str(shown)
