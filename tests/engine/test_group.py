"""The group runner: how every job of a group ends, decided once for every face.

Against the emulator on loopback, through a real client's engine.
"""

from __future__ import annotations

import _thread
import threading

import pytest

from miragic_nb import Client, GenerationRequest
from miragic_nb._core.states import JobState
from miragic_nb._engine.group import CLI, MAGIC, PYTHON, Group, GroupInterrupted, JobEnd
from miragic_nb.emulator import Emulator
from tests.conftest import eventually

STATUS = "/api/v1/image/jobs/"


def _requests(count: int) -> list[GenerationRequest]:
    return [GenerationRequest(f"group job {n}", width=256, height=256) for n in range(count)]


def test_a_group_runs_its_jobs_at_its_concurrency(client: Client, emulator: Emulator) -> None:
    group = Group(client.engine, concurrency=2)
    for request in _requests(5):
        group.add(request)
    seen: list[JobState] = []
    running: list[int] = []

    def subscriber(member: object) -> None:
        running.append(len(list(group.running())))
        end = group.members[getattr(member, "index", 0)].end
        if end is not None:
            seen.append(end.state)

    group.subscribe(subscriber)
    summary = group.run()
    assert [end.state for end in summary.ends] == [JobState.COMPLETED] * 5
    assert seen == [JobState.COMPLETED] * 5  # each end told once, on this thread
    assert len(emulator.jobs) == 5
    assert max(running) == 2


def test_ctrl_c_interrupts_what_was_sent_and_never_sends_the_rest(
    client: Client, emulator: Emulator
) -> None:
    emulator.job_seconds = 60.0
    group = Group(client.engine, concurrency=2, face=PYTHON)
    for request in _requests(6):
        group.add(request)

    def interrupt() -> None:
        if eventually(lambda: emulator.count("GET", STATUS) >= 2, 20):
            _thread.interrupt_main()

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(GroupInterrupted) as stopped:
        group.run()
    summary = stopped.value.summary
    assert summary.count(JobState.INTERRUPTED) == 2
    assert summary.count(JobState.NEVER_SENT) == 4
    assert summary.count(JobState.FAILED) == 0
    assert sorted(summary.resumable) == sorted(emulator.jobs)
    assert len(emulator.jobs) == 2
    assert stopped.value.lines[0] == (
        "Interrupted: 2 still on the server, 4 never sent (no credit used)."
    )
    for job_id in emulator.jobs:
        assert f"    client.resume({job_id!r})" in stopped.value.lines


def test_a_job_cancelled_before_it_was_sent_costs_nothing(
    client: Client, emulator: Emulator
) -> None:
    group = Group(client.engine, concurrency=1)
    member = group.add(_requests(1)[0])
    assert group.cancel(member) is False  # nothing was sent
    summary = group.run()
    (end,) = summary.ends
    assert end.state is JobState.CANCELLED
    assert not end.sent
    assert end.text(MAGIC) == "cancelled · before it was sent; no credit used"
    assert emulator.count("POST") == 0


def test_each_face_says_how_to_resume_in_its_own_words() -> None:
    end = JobEnd(JobState.INTERRUPTED, job_id="job-7", sent=True)
    assert end.text(MAGIC) == "interrupted · still on the server: %miragic resume job-7"
    assert end.text(PYTHON) == "interrupted · still on the server: client.resume('job-7')"
    assert end.text(CLI) == "interrupted · still on the server: rerun the same command to resume it"
    assert not end.is_failure
    assert JobEnd(JobState.NEVER_SENT).text(CLI) == "never sent · no credit used"
    assert JobEnd(JobState.FAILED).is_failure


def test_ctrl_c_in_generate_many_counts_no_stop_as_a_failure(
    client: Client, emulator: Emulator
) -> None:
    emulator.job_seconds = 60.0

    def interrupt() -> None:  # once both jobs the concurrency allows exist
        if eventually(lambda: len(emulator.jobs) >= 2, 20):
            _thread.interrupt_main()

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt) as stopped:
        client.generate_many(
            [f"batch job {n}" for n in range(6)], concurrency=2, name="stopped batch"
        )
    assert isinstance(stopped.value, GroupInterrupted)
    result = stopped.value.result
    assert result.failed == 0
    assert result.missing == 6
    states = sorted(end.state.words for end in result.ends.values())
    assert states == ["interrupted"] * 2 + ["never sent"] * 4
    assert "Call generate_many again with the same items to resume" in str(stopped.value)
