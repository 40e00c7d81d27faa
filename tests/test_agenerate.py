"""``await client.agenerate(...)`` over a real emulator on loopback: the same options as
``generate``, concurrency with ``asyncio.gather``, and a cancelled task that stops polling at
once and leaves its job id in the history, marked cancelled and resumable."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from miragic_nb._core.errors import InvalidRequestError
from miragic_nb._core.states import CANCELLED
from miragic_nb._store.history import History
from miragic_nb.client import Client
from miragic_nb.emulator import Emulator
from tests.conftest import FAST_POLLS, eventually

JOBS = "/api/v1/image/jobs/"


def _client(emulator: Emulator, home: Path) -> Client:
    return Client(
        emulator.api_key, emulator.url, poll_schedule=FAST_POLLS, timeout=30, history=History(home)
    )


def test_agenerate_takes_generate_options(emulator: Emulator, tmp_path: Path) -> None:
    with _client(emulator, tmp_path) as client:
        image = asyncio.run(client.agenerate("a fox", width=256, height=320, seed=7))
    assert image.size == (256, 320)
    assert image.metadata["seed"] == 7
    with _client(emulator, tmp_path) as client:
        with pytest.raises(InvalidRequestError, match="width"):
            asyncio.run(client.agenerate("a fox", width=3))


def test_gathered_calls_run_at_once(tmp_path: Path) -> None:
    with Emulator(api_key="test-key-0123456789", job_seconds=1.0) as emulator:
        with _client(emulator, tmp_path) as client:

            async def main() -> list[str]:
                images = await asyncio.gather(
                    *(client.agenerate(f"fox {n}", width=256, height=256) for n in range(4))
                )
                return [image.metadata["job_id"] for image in images]

            ids = asyncio.run(main())
        jobs = emulator.jobs
    assert len(set(ids)) == 4
    # All four were on the server at once: each was created before any other had finished.
    created = sorted(jobs[job_id].created_at for job_id in ids)
    finished = min(jobs[job_id].created_at + 1.0 for job_id in ids)
    assert created[-1] < finished


def test_a_cancelled_task_stops_polling_and_leaves_a_resumable_job(tmp_path: Path) -> None:
    with Emulator(api_key="test-key-0123456789", job_seconds=3.0) as emulator:
        with _client(emulator, tmp_path) as client:
            history = client.history
            assert history is not None

            async def main() -> None:
                task = asyncio.ensure_future(client.agenerate("slow fox", width=256, height=256))
                while not emulator.jobs:
                    await asyncio.sleep(0.01)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

            asyncio.run(main())
            (job_id,) = emulator.jobs
            # The emulator has the job a moment before the engine has recorded it.
            assert eventually(lambda: getattr(history.get(job_id), "status", None) == CANCELLED)
            reads = emulator.count("GET", JOBS + job_id)
            asyncio.run(asyncio.sleep(0.5))
            assert emulator.count("GET", JOBS + job_id) == reads  # polling stopped
            image = client.resume(job_id)
    assert image.metadata["job_id"] == job_id
