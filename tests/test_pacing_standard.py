"""A batch against hand-written servers that rate-limit creates by the HTTP standard only.

The servers (``benchmarks/standard_server.py``, not our emulator) answer an over-limit create
with ``429`` and ``Retry-After`` in whole seconds, or with no header at all. The pacing must
learn the rate from what they admit. No test times anything: each counts what the server saw
(creates answered 429, jobs made, and the tokens its bucket could not hold because the batch
sent nothing, i.e. capacity left unused), and the benchmark (``python -m benchmarks --only
pacing``) measures the wall time.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import requests

from benchmarks.standard_server import Shape, limited_api
from miragic_nb._engine.batch import BatchResult
from miragic_nb._engine.engine import CancelledBeforeStart
from miragic_nb._store.history import History
from miragic_nb.client import Client
from miragic_nb.emulator import Emulator, RateLimit
from tests.conftest import FAST_POLLS
from tests.hostile_servers import CREATE, ScriptedApi, json_answer

KEY = "standard-key-0123456789"
JOBS = 20

SHAPES = [
    pytest.param(Shape("retry-after", rate=4, burst=4), id="retry-after-whole-seconds"),
    pytest.param(Shape("bare", rate=10, burst=1, header="none"), id="no-header"),
    pytest.param(Shape("burst", rate=4, burst=8), id="burst-larger-than-rate"),
    pytest.param(Shape("halving", rate=8, burst=4, halve_after=10), id="limit-halves"),
]


def _quiet(counts: object) -> None:
    pass


@pytest.mark.parametrize("shape", SHAPES)
def test_a_batch_learns_the_rate_a_standard_server_admits(shape: Shape, tmp_path: Path) -> None:
    items = [{"prompt": f"tile {n}", "width": 256, "height": 256} for n in range(JOBS)]
    with limited_api(shape, job_seconds=0.2) as (url, state):
        with Client(
            KEY, url, poll_schedule=FAST_POLLS, timeout=60, history=History(tmp_path)
        ) as client:
            result = client.generate_many(items, on_progress=_quiet)  # type: ignore[arg-type]
    assert isinstance(result, BatchResult)
    assert result.failed == 0
    # Every job made exactly once, and every 429 seen by the batch itself.
    assert len(state.jobs) == JOBS
    assert state.made_twice() == 0
    assert result.rate_limited == state.refused
    sent = state.admitted + state.refused
    assert state.refused <= 0.3 * sent, f"{state.refused} of {sent} creates answered 429"
    # The old pacing spaced creates by the Retry-After value (one a second, then barely
    # faster): the bucket overflowed by several tokens a job. Learning the rate leaves at
    # most a few unused, on the whole-second pauses.
    assert state.wasted <= 0.5 * JOBS, f"{state.wasted:.1f} tokens offered and left unused"


def test_the_batch_timeout_stops_a_create_loop_that_never_gets_a_job(tmp_path: Path) -> None:
    refused = json_answer(
        {"success": False, "message": "Too many requests"}, 429, headers=[("Retry-After", "1")]
    )
    items = [f"never {n}" for n in range(5)]
    outcome: list[BatchResult] = []
    with ScriptedApi(create=refused) as api:
        client = Client(
            KEY, api.url, poll_schedule=FAST_POLLS, timeout=60, history=History(tmp_path)
        )

        def run() -> None:
            result = client.generate_many(items, timeout=3, on_progress=_quiet)
            assert isinstance(result, BatchResult)
            outcome.append(result)

        batch = threading.Thread(target=run, daemon=True)
        batch.start()
        batch.join(30)  # liveness only: the old loop never ended
        stopped = not batch.is_alive()
        creates = api.server.count("POST", CREATE)
        client.close()
    assert stopped, f"the batch was still sending creates ({creates} so far)"
    (result,) = outcome
    assert result.created == 0
    assert sorted(result.errors) == list(range(5))
    for index, error in result.errors.items():
        assert isinstance(error, CancelledBeforeStart)
        assert f"item {index}: not sent: the batch's timeout (3s) ran out" in str(error)
    # The pauses are honoured: a handful of creates in 3 s, never a storm.
    assert result.rate_limited == creates <= 8


def test_the_emulator_can_speak_only_the_standard_header(
    tmp_path: Path, http: requests.Session
) -> None:
    with Emulator(api_key=KEY, job_seconds=0.2, standard_headers=True) as emu:
        emu.limits.create = RateLimit(8, burst=2)
        items = [{"prompt": f"tile {n}", "width": 256, "height": 256} for n in range(12)]
        with Client(
            KEY, emu.url, poll_schedule=FAST_POLLS, timeout=60, history=History(tmp_path)
        ) as client:
            result = client.generate_many(items, on_progress=_quiet)  # type: ignore[arg-type]
        throttled = emu.throttled("create")
        made = sorted(job.prompt for job in emu.jobs.values())
        emu.limits.create = RateLimit(0.01, burst=1)  # one create, then none for 100 s
        form = {"prompt": "probe", "model": "flux", "width": "256", "height": "256"}
        answers = [
            http.post(emu.create_url, headers={"X-API-Key": KEY}, data=form, timeout=10)
            for _ in range(2)
        ]
    assert isinstance(result, BatchResult)
    assert result.failed == 0
    assert result.rate_limited == throttled > 0
    assert made == sorted(f"tile {n}" for n in range(12))  # each job made once
    assert [a.status_code for a in answers] == [200, 429]
    assert answers[1].headers["Retry-After"] == "100"
    assert "X-RateLimit-Reset-After" not in answers[1].headers
