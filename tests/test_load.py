"""Load: 200 jobs held open at once on the emulator, polled from 16 threads through one client.

Correctness, not speed, is asserted: zero errors, one job per generation, and every result
belongs to its own prompt (the server's record of the job, the image's metadata and its bytes
all agree). The figures (jobs/s, status reads, errors) are printed for the report; run with
``pytest -s tests/test_load.py`` to see them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest

from miragic_nb import Client, GeneratedImage, GenerationRequest
from miragic_nb._store.history import History
from miragic_nb.emulator import Emulator, Fault
from tests.conftest import FAST_POLLS

CREATE = "/api/v1/image/generate"
STATUS = "/api/v1/image/jobs/"
JOBS = 200
THREADS = 16
T = TypeVar("T")


def _prompt(index: int) -> str:
    return f"load test picture number {index:03d}, a lighthouse"


def _collect(work: Callable[[int], T], count: int) -> tuple[dict[int, T], dict[int, BaseException]]:
    """Run ``work(i)`` for every index on THREADS threads; results and errors by index."""
    results: dict[int, T] = {}
    errors: dict[int, BaseException] = {}
    with ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="load") as pool:
        futures = {index: pool.submit(work, index) for index in range(count)}
        for index, future in futures.items():
            try:
                results[index] = future.result()
            except Exception as exc:
                errors[index] = exc
    return results, errors


def _assert_own_results(
    emulator: Emulator, results: dict[int, GeneratedImage], prompts: Callable[[int], str]
) -> None:
    """Each image is its own job's: prompt, server record and bytes agree; no id twice."""
    ids = [image.metadata["job_id"] for image in results.values()]
    assert len(set(ids)) == len(ids)
    for index, image in results.items():
        job = emulator.jobs[image.metadata["job_id"]]
        assert job.form["prompt"] == prompts(index)
        assert image.metadata["prompt"] == prompts(index)
        assert image.original_bytes == job.result_bytes
    # Every prompt renders differently, so a swapped result could not go unnoticed.
    assert len({image.original_bytes for image in results.values()}) == len(results)


@pytest.mark.timeout(120)
def test_200_concurrent_jobs_polled_from_16_threads() -> None:
    with Emulator(api_key="load-key", job_seconds=60, jitter=0.2) as emulator:
        # Every job stays PENDING until all 200 exist, so all 200 are open at the same time.
        emulator.faults.never_finish = True
        history = History()
        with Client(
            emulator.api_key, emulator.url, poll_schedule=FAST_POLLS, timeout=60, history=history
        ) as client:
            requests = [GenerationRequest(_prompt(i), width=256, height=256) for i in range(JOBS)]
            started = time.monotonic()
            jobs, create_errors = _collect(lambda i: client.submit(requests[i]), JOBS)
            create_seconds = time.monotonic() - started
            assert create_errors == {}
            assert len(emulator.jobs) == JOBS
            open_jobs = [job for job in emulator.jobs.values() if job.status() == "PENDING"]
            assert len(open_jobs) == JOBS

            # Release them: each finishes at its own (jittered) moment from now on.
            released = time.monotonic()
            for index, job in enumerate(emulator.jobs.values()):
                job.duration = released - job.created_mono + 0.5 + (index % 10) * 0.05
                job.never_finish = False
            results, errors = _collect(lambda i: client.resume(jobs[i], request=requests[i]), JOBS)
            total = time.monotonic() - started
            wait_seconds = time.monotonic() - released

        reads = emulator.count("GET", STATUS)
        print(
            f"\nload: {JOBS} jobs from {THREADS} threads: created in {create_seconds:.2f}s "
            f"({JOBS / create_seconds:.0f} creates/s); all results in {wait_seconds:.2f}s after "
            f"release ({JOBS / wait_seconds:.0f} jobs/s); {total:.2f}s overall; "
            f"{reads} status reads ({reads / JOBS:.1f}/job); errors: {len(errors)}"
        )
        assert errors == {}, next(iter(errors.values()))
        assert len(results) == JOBS
        assert emulator.count("POST", CREATE) == JOBS
        assert len(emulator.jobs) == JOBS
        assert all(results[i].metadata["job_id"] == jobs[i].id for i in range(JOBS))
        _assert_own_results(emulator, results, _prompt)
        records = history.records()
        assert len(records) == JOBS
        assert {record.status for record in records} == {"COMPLETED"}


@pytest.mark.timeout(120)
def test_one_client_shared_by_threads_through_transient_faults() -> None:
    """Whole generations (create, wait, download) on one client, while faults come and go."""
    count = 48
    with Emulator(api_key="load-key", job_seconds=0.4, jitter=0.5) as emulator:
        emulator.faults.push("create", Fault.rate_limited(0.05), times=4)
        emulator.faults.push("status", Fault.http(503), times=12)
        emulator.faults.push("status", Fault.reset(), times=4)
        emulator.faults.push("download", Fault.reset(), times=4)
        emulator.faults.progress = "string"
        with Client(emulator.api_key, emulator.url, poll_schedule=FAST_POLLS, timeout=60) as client:

            def generate(index: int) -> GeneratedImage:
                model = ("flux", "turbo", "gptimage")[index % 3]
                return client.generate(
                    _prompt(index), model=model, width=256 + 64 * (index % 4), height=256
                )

            started = time.monotonic()
            results, errors = _collect(generate, count)
            elapsed = time.monotonic() - started
        print(
            f"\nshared client: {count} generations from {THREADS} threads in {elapsed:.2f}s "
            f"({count / elapsed:.1f} jobs/s) through {emulator.count('POST', CREATE, status=429)} "
            f"429s and 20 status/download faults; errors: {len(errors)}"
        )
        assert errors == {}, next(iter(errors.values()))
        assert emulator.faults.pending() == 0  # every fault was met
        assert emulator.count("POST", CREATE) - emulator.count("POST", CREATE, status=429) == count
        assert len(emulator.jobs) == count
        _assert_own_results(emulator, results, _prompt)
        for index, image in results.items():
            assert image.metadata["model"] == ("flux", "turbo", "gptimage")[index % 3]
            assert image.size == (256 + 64 * (index % 4), 256)
