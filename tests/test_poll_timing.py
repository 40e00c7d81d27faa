"""The client's status reads follow the poll plan: learned durations, resumed jobs, sharing.

Over real loopback sockets against the emulator (``conftest.py``: 0.3 s jobs). Assertions are
on what the client learned and on how many status reads reached the emulator, never on time.
"""

from __future__ import annotations

import time

from miragic_nb._core.polling import DurationLearner
from miragic_nb.client import Client
from miragic_nb.emulator import Emulator

from .conftest import FAST_POLLS

STATUS = "/api/v1/image/jobs/"


def test_a_completed_job_teaches_the_client_its_duration(client: Client) -> None:
    assert client.api.durations.estimate("turbo", 512, 384) is None
    image = client.generate("a kite", model="turbo", width=512, height=384)
    estimate = client.api.durations.estimate("turbo", 512, 384)
    assert estimate is not None
    assert estimate.samples == 1
    assert estimate.progress  # the emulator reports progress by default
    assert estimate.low <= image.metadata["processing_s"] <= estimate.high
    assert client.api.durations.estimate("turbo", 384, 512) is None  # per size, too


def test_without_progress_the_learned_duration_saves_status_reads(
    emulator: Emulator, client: Client
) -> None:
    emulator.report_progress = False
    emulator.jitter = 0.0
    first = client.generate("first", model="flux", width=256, height=256)
    second = client.generate("second", model="flux", width=256, height=256)
    estimate = client.api.durations.estimate("flux", 256, 256)
    assert estimate is not None
    assert not estimate.progress
    cold = emulator.count("GET", STATUS, job_id=first.metadata["job_id"])
    learned = emulator.count("GET", STATUS, job_id=second.metadata["job_id"])
    assert learned < cold


def test_a_job_resumed_by_id_is_read_at_once(emulator: Emulator, client: Client) -> None:
    job = client.submit("resume me", model="turbo", width=256, height=256)
    record = emulator.wait_for_job(job.id)
    while record.status() != "COMPLETED":  # rendered; now let its 0.3 s run out
        time.sleep(0.02)
    with Client(emulator.api_key, emulator.url, poll_schedule=FAST_POLLS, history=False) as other:
        other.resume(job.id)  # this client never saw the job created: it reads at once
    assert emulator.count("GET", STATUS, job_id=job.id) == 1


def test_clients_can_pool_what_they_learn(emulator: Emulator) -> None:
    shared = DurationLearner()
    for prompt in ("one", "two"):
        with Client(
            emulator.api_key,
            emulator.url,
            poll_schedule=FAST_POLLS,
            durations=shared,
            history=False,
        ) as each:
            each.generate(prompt, model="kontext", width=256, height=256)
    estimate = shared.estimate("kontext", 256, 256)
    assert estimate is not None
    assert estimate.samples == 2


def test_without_progress_a_job_as_long_as_the_last_ones_is_read_once(
    emulator: Emulator, client: Client
) -> None:
    """The first read is timed just after the learned end, so it finds the job done."""
    emulator.report_progress = False
    emulator.jitter = 0.0
    for n in range(3):
        client.generate(f"learn {n}", model="flux", width=256, height=256)
    image = client.generate("same length", model="flux", width=256, height=256)
    # Allow one more read in case the emulator, on a loaded machine, finished a moment late.
    assert emulator.count("GET", STATUS, job_id=image.metadata["job_id"]) <= 2
