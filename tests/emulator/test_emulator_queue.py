"""The emulator's queue model: N service workers, first come first served.

The schedule is checked as pure arithmetic against a brute-force definition, then over real
sockets with plain ``requests``: a job beyond N reports ``PENDING`` and progress 0 while the
first N run, and its ``createdAt``..``updatedAt`` span includes the wait while
``processingTimeMs`` does not. Assertions compare jobs with each other, never with the clock.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from miragic_nb.emulator import Emulator, RateLimit
from miragic_nb.emulator.queueing import ServiceQueue

KEY = "queue-test-key"
HEADERS = {"X-API-Key": KEY}
FORM = {"prompt": "A queue of ships", "model": "turbo", "width": "256", "height": "256"}


# ---------------------------------------------------------------- the schedule, pure


def earliest_start(created: float, earlier_ends: list[float], workers: int) -> float:
    """By definition: the first moment from creation when fewer than N earlier jobs are running."""
    candidates = sorted({created, *(end for end in earlier_ends if end > created)})
    for moment in candidates:
        if sum(end > moment for end in earlier_ends) < workers:
            return moment
    raise AssertionError("unreachable: after the last end every worker is free")


@given(
    workers=st.integers(1, 5),
    jobs=st.lists(st.tuples(st.floats(0, 2), st.floats(0, 3)), min_size=1, max_size=40),
)
def test_each_job_starts_when_a_worker_is_first_free(
    workers: int, jobs: list[tuple[float, float]]
) -> None:
    queue = ServiceQueue(workers)
    now, ends = 0.0, list[float]()
    for gap, duration in jobs:
        now += gap
        start = queue.admit(now, duration)
        assert start == pytest.approx(earliest_start(now, ends, workers))
        ends.append(start + duration)


def test_unlimited_workers_start_every_job_at_once() -> None:
    queue = ServiceQueue()
    assert [queue.admit(5.0, 10.0) for _ in range(100)] == [5.0] * 100


@pytest.mark.parametrize(
    ("busy_until", "workers", "expected_starts"),
    [
        # three jobs run until 5, 6 and 7; with two workers the next starts when one is left
        ([5.0, 6.0, 7.0], 2, [6.0, 7.0, 7.0]),
        ([5.0, 6.0, 7.0], 1, [7.0, 8.0, 9.0]),
        ([5.0, 6.0, 7.0], 4, [0.0, 1.0, 2.0]),  # the free worker takes one job after another
        ([-3.0, 5.0], 1, [5.0, 6.0, 7.0]),  # jobs already over hold no worker
        ([5.0, 6.0, 7.0], None, [0.0, 0.0, 0.0]),
    ],
)
def test_resizing_keeps_jobs_already_scheduled(
    busy_until: list[float], workers: int | None, expected_starts: list[float]
) -> None:
    queue = ServiceQueue()
    queue.resize(workers, busy_until, now=0.0)
    assert [queue.admit(0.0, 1.0) for _ in expected_starts] == expected_starts


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_bad_worker_counts_are_refused(workers: Any) -> None:
    with pytest.raises(ValueError, match="workers must be a positive int or None"):
        ServiceQueue(workers)
    with pytest.raises(ValueError, match="workers must be a positive int or None"):
        Emulator(workers=workers)


# ---------------------------------------------------------------- over sockets


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(api_key=KEY, job_seconds=30.0, jitter=0.0, workers=2) as emulator:
        yield emulator


def create(emu: Emulator, http: requests.Session) -> str:
    response = http.post(emu.create_url, headers=HEADERS, data=FORM, timeout=10)
    assert response.status_code == 200, response.text
    job_id: str = response.json()["data"]["jobId"]
    return job_id


def record(emu: Emulator, http: requests.Session, job_id: str) -> dict[str, Any]:
    response = http.get(emu.status_url(job_id), headers=HEADERS, timeout=10)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def span(data: dict[str, Any]) -> float:
    """Seconds between a record's ``createdAt`` and ``updatedAt``."""

    def parse(stamp: str) -> datetime:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))

    return (parse(data["updatedAt"]) - parse(data["createdAt"])).total_seconds()


def test_the_job_beyond_n_workers_waits_with_progress_zero(
    emu: Emulator, http: requests.Session
) -> None:
    emu.job_seconds = 10.0
    first, second, third = (create(emu, http) for _ in range(3))
    assert emu.jobs[first].queued_seconds == 0
    assert emu.jobs[second].queued_seconds == 0
    assert emu.jobs[third].queued_seconds > 8  # until the first of the 10 s jobs is over
    # The first two run (1% every 0.1 s) while the third, created with them, has not started.
    deadline = time.monotonic() + 10
    while (running := record(emu, http, first))["progress"] < 5:
        assert time.monotonic() < deadline, "the first job's progress never moved"
        time.sleep(0.05)
    queued = record(emu, http, third)
    assert running["status"] == "PENDING"
    assert (queued["status"], queued["progress"]) == ("PENDING", 0)


def test_queued_time_shows_in_the_span_but_not_in_processing_time(
    http: requests.Session,
) -> None:
    with Emulator(api_key=KEY, job_seconds=0.4, jitter=0.0, workers=1) as emu:
        ids = [create(emu, http) for _ in range(3)]
        for job_id in ids:
            emu.wait_for_job(job_id)
        deadline = time.monotonic() + 30
        while emu.jobs[ids[-1]].status() == "PENDING":
            assert time.monotonic() < deadline, "the last job never finished"
            time.sleep(0.05)
        records = [record(emu, http, job_id) for job_id in ids]
    assert [r["status"] for r in records] == ["COMPLETED"] * 3
    services = [r["metadata"]["processingTimeMs"] / 1000 for r in records]
    assert all(service >= 0.4 for service in services)
    # Each job waited for the ones before it, so the wait in its span grows job by job.
    waits = [span(r) - service for r, service in zip(records, services, strict=True)]
    assert waits[0] < waits[1] < waits[2]
    # First come, first served: each job starts when the one before it is due.
    jobs = [emu.jobs[job_id] for job_id in ids]
    for before, after in itertools.pairwise(jobs):
        assert after.started_mono == pytest.approx(before.started_mono + before.duration)


def test_workers_change_at_run_time(http: requests.Session) -> None:
    with Emulator(api_key=KEY, job_seconds=30.0, jitter=0.0) as emu:
        running = [create(emu, http) for _ in range(3)]  # unlimited: all three start now
        assert [emu.jobs[j].queued_seconds for j in running] == [0, 0, 0]
        emu.workers = 3  # the three running jobs hold all three workers
        waiting = create(emu, http)
        assert emu.jobs[waiting].queued_seconds > 25
        assert record(emu, http, waiting)["progress"] == 0
        emu.workers = None
        unqueued = create(emu, http)
        assert emu.jobs[unqueued].queued_seconds == 0
        assert emu.jobs[waiting].queued_seconds > 25  # a scheduled job keeps its schedule
        assert emu.workers is None


def test_restart_keeps_the_worker_count_and_the_limits(http: requests.Session) -> None:
    emu = Emulator(api_key=KEY, job_seconds=30.0, jitter=0.0, workers=1)
    emu.limits.status = RateLimit(0.01, 1)
    emu.start()
    emu.stop()
    with emu:
        first, second = create(emu, http), create(emu, http)
        assert emu.jobs[first].queued_seconds == 0
        assert emu.jobs[second].queued_seconds > 25
        assert record(emu, http, first)["status"] == "PENDING"
        response = http.get(emu.status_url(first), headers=HEADERS, timeout=10)
        assert response.status_code == 429
