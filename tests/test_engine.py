"""The job engine: one lifecycle, its events, the store's status words, cancellation before
the create, the one worker policy and the emulator label, over a real emulator on loopback."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from miragic_nb._core.errors import APIError, JobFailedError, JobTimeoutError
from miragic_nb._core.jobs import Job
from miragic_nb._core.request import GenerationRequest
from miragic_nb._core.states import JobState, store_status
from miragic_nb._engine.engine import CancelledBeforeStart, Engine, JobHandle, Workers
from miragic_nb._store.history import History
from miragic_nb.client import Client
from miragic_nb.emulator import Emulator
from tests.conftest import FAST_POLLS

CREATE = "/api/v1/image/generate"


def _client(emulator: Emulator, home: Path) -> Client:
    return Client(
        emulator.api_key, emulator.url, poll_schedule=FAST_POLLS, timeout=20, history=History(home)
    )


def test_every_state_has_one_status_word_in_the_store() -> None:
    failed = Job(id="j", status="FAILED")
    assert store_status(JobState.COMPLETED) == "COMPLETED"
    assert store_status(JobState.FAILED, JobFailedError("no", job=failed)) == "FAILED"
    assert store_status(JobState.FAILED, APIError("broken", status_code=500)) == "ERROR"
    assert store_status(JobState.CANCELLED) == "CANCELLED"
    assert store_status(JobState.TIMED_OUT, JobTimeoutError("late", job_id="j")) == "TIMEOUT"
    for state in (JobState.QUEUED, JobState.SUBMITTING, JobState.PENDING, JobState.DOWNLOADING):
        assert store_status(state) == "PENDING"
        assert not state.is_final


def test_a_job_walks_the_lifecycle_and_says_so(emulator: Emulator, tmp_path: Path) -> None:
    seen: list[JobState] = []
    with _client(emulator, tmp_path) as client:
        handle = JobHandle(GenerationRequest("a walk", width=256, height=256))
        handle.subscribe(lambda h: seen.append(h.state))
        image = client.engine.start(handle).wait(timeout=30)
        record = client.history.get(handle.id or "") if client.history else None
    assert handle.state is JobState.COMPLETED
    assert handle.result is image
    assert handle.id == image.metadata["job_id"]
    steps = list(dict.fromkeys(seen))  # each state once, in the order first reached
    assert steps == [
        JobState.SUBMITTING,
        JobState.PENDING,
        JobState.DOWNLOADING,
        JobState.COMPLETED,
    ]
    assert record is not None
    assert record.status == "COMPLETED"


def test_a_job_cancelled_before_its_worker_runs_sends_nothing(
    emulator: Emulator, tmp_path: Path
) -> None:
    gate = threading.Event()
    workers = Workers(max_workers=1)
    blocker = workers.submit(gate.wait)  # the only worker is busy
    with _client(emulator, tmp_path) as client:
        handle = client.engine.start(JobHandle(GenerationRequest("never sent")), workers=workers)
        assert handle.cancel() is False  # nothing had been sent
        assert handle.state is JobState.CANCELLED
        gate.set()
        blocker.result(timeout=10)
        with pytest.raises(CancelledBeforeStart):
            handle.wait(timeout=10)
        assert client.history is not None
        assert client.history.records() == []
    assert emulator.count("POST", CREATE) == 0


def test_the_create_is_refused_once_cancelled_even_when_run_directly(
    emulator: Emulator, tmp_path: Path
) -> None:
    with _client(emulator, tmp_path) as client:
        handle = JobHandle(GenerationRequest("cancelled first"))
        handle.cancel()
        with pytest.raises(CancelledBeforeStart):
            client.engine.run(handle)
    assert emulator.requests == []


def test_the_emulator_label_is_applied_to_new_and_reused_results(
    emulator: Emulator, tmp_path: Path
) -> None:
    with _client(emulator, tmp_path) as client:
        plain = client.generate("unlabelled", width=256, height=256, seed=1)
        assert "emulator" not in plain.metadata
        labelled = Engine(client.api, history=client.history, emulator=True)
        request = GenerationRequest("labelled", width=256, height=256, seed=2)
        made = labelled.run(JobHandle(request))
        reused = labelled.run(JobHandle(request))
    assert made.metadata["emulator"] is True
    assert reused.metadata["emulator"] is True
    assert reused.metadata["reused"] is True
    assert emulator.count("POST", CREATE) == 2


def test_an_unreadable_history_is_logged_and_the_job_still_runs(
    emulator: Emulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "history.sqlite3").write_bytes(b"this is not a database" * 100)
    with _client(emulator, home) as client:
        image = client.generate("despite the history", width=256, height=256, seed=9)
    assert image.metadata["job_id"] in emulator.jobs
    assert "could not look for a saved result" in caplog.text


def test_a_submitted_job_is_recorded_the_moment_it_exists(
    emulator: Emulator, tmp_path: Path
) -> None:
    with _client(emulator, tmp_path) as client:
        job = client.submit("recorded at once", width=256, height=256)
        assert client.history is not None
        record = client.history.get(job.id)
        assert record is not None
        assert (record.status, record.prompt) == ("PENDING", "recorded at once")
        image = client.resume(job.id)
        assert client.history.get(job.id).status == "COMPLETED"  # type: ignore[union-attr]
    assert image.metadata["job_id"] == job.id
