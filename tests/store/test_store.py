"""The history database never gets worse: refused when it is not ours to write, intact after a
kill, safe with hostile text; queries are indexed; filters and usage figures."""

from __future__ import annotations

import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from miragic_nb._core.errors import (
    HistoryCorruptError,
    HistoryError,
    HistoryTooNewError,
    JobFailedError,
    MiragicError,
)
from miragic_nb._core.images import GeneratedImage
from miragic_nb._core.request import GenerationRequest
from miragic_nb._core.states import COMPLETED, FAILED, TIMEOUT
from miragic_nb._store import store as store_module
from miragic_nb._store.history import History
from miragic_nb.client import Client
from miragic_nb.emulator import Emulator
from tests.conftest import FAST_POLLS
from tests.loopback import loopback_server
from tests.store.test_history import BASE, complete, jpeg_bytes, png_bytes, result

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path) -> History:
    return History(tmp_path / "home")


def every_use(history: History) -> list[Callable[[], object]]:
    """Each public read and write of the history."""
    request = GenerationRequest("p", seed=1)
    return [
        lambda: history.records(),
        lambda: history.records(10, search="p", model="flux", status=COMPLETED),
        lambda: history.get("job"),
        lambda: history.reuse(request, base_url=BASE),
        lambda: history.usage(),
        lambda: history.record_created("job", request, base_url=BASE),
        lambda: history.record_status("job", FAILED, error_message="x"),
        lambda: history.record_result(result("job", request)),
    ]


# -- a database that is not ours to write ----------------------------------------------------


def assert_refused(history: History, error: type[HistoryError], *phrases: str) -> None:
    """Every use of ``history`` raises ``error``, in one line that says each of ``phrases``."""
    for use in every_use(history):
        with pytest.raises(error) as caught:
            use()
        message = str(caught.value)
        assert "\n" not in message
        assert all(phrase in message for phrase in phrases), message
        assert isinstance(caught.value, MiragicError)


def files_of(home: Path) -> dict[str, bytes]:
    """Every file in ``home`` (the database and any WAL beside it) with its bytes; not the
    WAL's shared-memory index, which every reader updates and which holds no data."""
    return {
        p.name: p.read_bytes() for p in home.iterdir() if p.is_file() and p.suffix != ".sqlite3-shm"
    }


def test_a_database_from_a_newer_version_is_refused_and_left_as_it_is(store: History) -> None:
    complete(store, "job-1", GenerationRequest("kept", seed=1))
    database = store.home / "history.sqlite3"
    with sqlite3.connect(database) as connection:
        connection.execute("PRAGMA user_version = 99")
    connection.close()
    before = files_of(store.home)

    assert_refused(store, HistoryTooNewError, "newer miragic-nb", "schema 99", "left as it is")
    assert files_of(store.home) == before


@pytest.mark.parametrize("content", [b"garbage " * 700, os.urandom(8192)], ids=["text", "random"])
def test_a_corrupt_database_is_refused_and_left_as_it_is(tmp_path: Path, content: bytes) -> None:
    home = tmp_path / "home"
    home.mkdir()
    database = home / "history.sqlite3"
    database.write_bytes(content)

    assert_refused(History(home), HistoryCorruptError, "not a database", "left as it is")
    assert files_of(home) == {"history.sqlite3": content}


def test_a_corrupt_history_does_not_cost_the_client_its_result(
    emulator: Emulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The client logs a history it cannot write (a HistoryError is also an OSError), and the
    # paid-for image still comes back.
    home = tmp_path / "home"
    home.mkdir()
    garbage = b"garbage " * 700
    (home / "history.sqlite3").write_bytes(garbage)
    with Client(
        emulator.api_key, emulator.url, poll_schedule=FAST_POLLS, history=History(home)
    ) as client:
        with caplog.at_level(logging.WARNING, logger="miragic_nb"):
            image = client.generate("an unseeded picture")
    assert image.size == (1024, 1024)
    assert "could not write the job history" in caplog.text
    assert "not a database" in caplog.text
    assert (home / "history.sqlite3").read_bytes() == garbage


# -- a writer killed mid-write -----------------------------------------------------------------

_WRITER = """
import io, sys
from PIL import Image
from miragic_nb._store.history import History
from miragic_nb._core.images import GeneratedImage
from miragic_nb._core.request import GenerationRequest

store = History(sys.argv[1])
start = int(sys.argv[2])
buffer = io.BytesIO()
Image.new("RGB", (32, 24), (10, 200, 30)).save(buffer, "JPEG")
for n in range(start, start + 10_000):
    job_id = f"job-{n}"
    request = GenerationRequest(f"prompt {n}", seed=n)
    store.record_created(job_id, request, base_url="http://127.0.0.1:1")
    if n % 3 == 0:
        meta = {"job_id": job_id, **request.describe(), "base_url": "http://127.0.0.1:1"}
        store.record_result(GeneratedImage.from_bytes(buffer.getvalue(), meta))
    else:
        store.record_status(job_id, "TIMEOUT", error_message=f"message {n}")
    print(job_id, flush=True)
"""


def test_a_writer_killed_mid_write_leaves_every_committed_record(tmp_path: Path) -> None:
    home = tmp_path / "home"
    rng = random.Random(20261202)
    reported: list[str] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for round_number in range(5):
        with subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(home), str(round_number * 10_000)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        ) as child:
            assert child.stdout is not None
            wanted, deadline = rng.randint(3, 40), time.monotonic() + 60
            committed: list[str] = []
            while len(committed) < wanted and time.monotonic() < deadline:
                line = child.stdout.readline()
                if not line:
                    break
                committed.append(line.strip())
            time.sleep(rng.uniform(0, 0.02))  # land anywhere in the next write
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
            committed.extend(line.strip() for line in child.stdout if line.strip())
        assert child.returncode == -signal.SIGKILL
        assert len(committed) >= wanted
        reported.extend(committed)
    assert len(reported) >= 5 * 3

    history = History(home)
    with sqlite3.connect(home / "history.sqlite3") as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    connection.close()
    for job_id in reported:
        record = history.get(job_id)
        assert record is not None, job_id
        n = int(job_id.split("-")[1])
        assert record.prompt == f"prompt {n}"
        if n % 3 == 0:
            assert record.status == COMPLETED
            image = history.reuse(
                GenerationRequest(f"prompt {n}", seed=n), base_url="http://127.0.0.1:1"
            )
            assert image is not None
            assert image.size == (32, 24)
        else:
            assert (record.status, record.error_message) == (TIMEOUT, f"message {n}")
    # Writing goes on after the kills.
    assert history.record_status(reported[-1], FAILED).job_id == reported[-1]


# -- hostile text --------------------------------------------------------------------------------


def test_lone_surrogates_are_stored_instead_of_failing_the_write(store: History) -> None:
    # A request refuses a lone surrogate in its prompt (test_magic_input.py), so such text
    # reaches the store only from a server: a job id, an error message.
    request = GenerationRequest("a prompt", seed=3)
    created = store.record_created("job-\udcff", request, base_url=BASE)
    failed = store.record_status("job-\udcff", FAILED, error_message="bad \udc80 text")
    assert created.job_id == "job-\\udcff"
    assert failed.error_message == "bad \\udc80 text"
    assert failed.events[-1].error_message == "bad \\udc80 text"
    assert store.get("job-\udcff") == failed

    saved = complete(store, "job-\ud800", request, png_bytes())
    assert saved.path is not None
    assert store.reuse(request, base_url=BASE) is not None


@pytest.fixture
def failing_server() -> Iterator[tuple[str, list[str]]]:
    """An API whose job fails with an ``errorMessage`` holding a lone surrogate (valid JSON);
    yields its URL and the requests it answered."""
    seen: list[str] = []

    def answer(request: BaseHTTPRequestHandler, method: str) -> tuple[str, bytes]:
        seen.append(f"{method} {request.path}")
        if method == "POST":
            body = '{"success": true, "data": {"jobId": "job-s", "status": "PENDING"}}'
        else:
            body = (
                '{"success": true, "data": {"id": "job-s", "status": "FAILED", '
                '"errorMessage": "refused \\ud800 here"}}'
            )
        return "application/json", body.encode()

    with loopback_server(answer) as url:
        yield url, seen


def test_a_lone_surrogate_in_a_server_error_keeps_the_job_failed_error(
    failing_server: tuple[str, list[str]], tmp_path: Path
) -> None:
    url, seen = failing_server
    history = History(tmp_path / "home")
    with Client(
        "test-key-0123456789",
        url,
        poll_schedule=FAST_POLLS,
        timeout=10,
        history=history,
    ) as client:
        with pytest.raises(JobFailedError) as caught:
            client.generate("a picture", seed=1)
    assert caught.value.job_id == "job-s"
    assert 2 <= len(seen) < 20
    record = history.get("job-s")
    assert record is not None
    assert record.status == FAILED
    assert record.error_message is not None
    # Made printable where it entered (server_text): the half pair is U+FFFD.
    assert "refused \ufffd here" in record.error_message


def test_credentials_in_urls_are_never_stored(store: History) -> None:
    request = GenerationRequest(
        "kontext edit", model="kontext", image_url="https://alice:s3cret@img.test/in.png", seed=4
    )
    base = "http://bob:hunter2@127.0.0.1:8765"
    store.record_created("job-u", request, base_url=base)
    image = result("job-u", request, jpeg_bytes(), base_url=base)
    image.metadata["result_url"] = "https://carol:pa55@cdn.test/out.jpg?sig=1"
    record = store.record_result(image)

    assert record.image_url == "https://img.test/in.png"
    assert record.base_url == "http://127.0.0.1:8765"
    assert record.result_url == "https://cdn.test/out.jpg?sig=1"
    for path in store.home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in (b"s3cret", b"hunter2", b"pa55", b"alice", b"bob", b"carol"):
                assert secret not in data, (path, secret)
    # The same request (as the user wrote it) still finds its result.
    assert store.reuse(request, base_url=base) is not None


def test_every_write_error_is_a_miragic_error(store: History, tmp_path: Path) -> None:
    with pytest.raises(MiragicError, match="job_id"):
        store.record_result(GeneratedImage.from_bytes(jpeg_bytes(), {"prompt": "no id"}))
    with pytest.raises(MiragicError, match="status"):
        store.record_status("job", "")
    # A data directory that cannot be created: a HistoryError, which is also an OSError.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(HistoryError) as caught:
        History(blocker / "home").record_created("job", GenerationRequest("p"), base_url=BASE)
    assert isinstance(caught.value, OSError)
    assert "\n" not in str(caught.value)


# -- indexed queries -------------------------------------------------------------------------


def test_listing_and_reuse_are_indexed_queries(
    store: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(30):
        complete(store, f"job-{n}", GenerationRequest(f"prompt {n}", model="turbo", seed=n))
    statements: list[str] = []
    original = store_module.Database._connection

    def traced(self: store_module.Database) -> sqlite3.Connection:
        connection = original(self)
        connection.set_trace_callback(statements.append)
        return connection

    monkeypatch.setattr(store_module.Database, "_connection", traced)
    assert len(store.records(10)) == 10
    assert store.reuse(GenerationRequest("prompt 7", model="turbo", seed=7), base_url=BASE)
    assert store.get("job-3") is not None
    monkeypatch.undo()

    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) >= 5
    with sqlite3.connect(store.home / "history.sqlite3") as connection:
        for statement in selects:
            plan = " | ".join(
                row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {statement}")
            )
            # Every table is reached through an index, never read whole or sorted afterwards.
            steps = [step for step in plan.split(" | ") if "jobs" in step or "events" in step]
            assert steps, plan
            assert all("INDEX" in step for step in steps), plan
            assert "TEMP B-TREE" not in plan, plan
    connection.close()


# -- filters and usage -------------------------------------------------------------------


def test_records_filter_by_text_model_status_and_time(store: History) -> None:
    complete(store, "fox", GenerationRequest("A red FOX in snow", model="turbo", seed=1))
    complete(store, "owl", GenerationRequest("an owl, 100% asleep", model="flux", seed=2))
    store.record_created("cat", GenerationRequest("a cat_like fox", model="turbo"), base_url=BASE)
    store.record_status("cat", FAILED, error_message="refused")

    def ids(**filters: Any) -> list[str]:
        return [r.job_id for r in store.records(**filters)]

    assert ids(search="fox") == ["cat", "fox"]  # any case, newest first
    assert ids(search="100%") == ["owl"]
    assert ids(search="_") == ["cat"]  # wildcards are literal
    assert ids(model="turbo") == ["cat", "fox"]
    assert ids(status="failed") == ["cat"]
    assert ids(search="fox", model="turbo", status=COMPLETED) == ["fox"]
    assert ids(since=datetime.now(timezone.utc) + timedelta(minutes=1)) == []
    assert ids(since=datetime.now(timezone.utc) - timedelta(minutes=1), limit=2) == ["cat", "owl"]
    assert ids(search="nothing like it") == []


def test_usage_counts_credits_jobs_failures_and_reuses(store: History) -> None:
    fox = GenerationRequest("fox", model="turbo", seed=1)
    complete(store, "fox", fox)  # 1 credit
    complete(store, "owl", GenerationRequest("owl", model="flux", seed=2))
    store.record_created("cat", GenerationRequest("cat", model="turbo"), base_url=BASE)
    store.record_status("cat", FAILED, error_message="refused")
    assert store.reuse(fox, base_url=BASE) is not None
    assert store.reuse(fox, base_url=BASE) is not None

    by_model = {row.key: row for row in store.usage()}
    assert set(by_model) == {"flux", "turbo"}
    turbo = by_model["turbo"]
    assert (turbo.jobs, turbo.credits, turbo.failures, turbo.reuses) == (2, 1.0, 1, 2)
    flux = by_model["flux"]
    assert (flux.jobs, flux.credits, flux.failures, flux.reuses) == (1, 1.0, 0, 0)

    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    (day,) = store.usage(by="day")
    assert (day.key, day.jobs, day.credits, day.failures, day.reuses) == (today, 3, 2.0, 1, 2)
    assert store.usage(since=datetime.now(timezone.utc) + timedelta(minutes=1)) == []
    with pytest.raises(MiragicError, match="by must be"):
        store.usage(by="week")  # type: ignore[arg-type]


def test_server_text_with_a_lone_surrogate_becomes_printable() -> None:
    from miragic_nb._core.errors import server_text

    shown = server_text("refused \ud800 here")
    assert shown == "refused \ufffd here"
    shown.encode("utf-8")  # what print() does in a UTF-8 terminal; raised before
