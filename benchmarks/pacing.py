"""Benchmark: a batch against hand-written servers that rate-limit creates by the standard.

For each shape of limit in ``standard_server.SHAPES`` (``Retry-After`` in whole seconds; no
header at all; a burst larger than the rate; a limit that halves halfway through), 40
one-second jobs through ``generate_many``: wall time against the limit-bound ideal (goal
≤ 1.15×), creates answered 429 as a share of all creates sent (≤ 10 %) and jobs made twice
(none). The servers are not our emulator: they send no precise reset header.
"""

from __future__ import annotations

import tempfile

from miragic_nb._engine.batch import BatchCounts, BatchResult
from miragic_nb._store.history import History
from miragic_nb.client import Client

from .common import API_KEY, TIGHT_POLLS, Row, Settings, timed
from .standard_server import SHAPES, Shape, limited_api

JOBS = 40
JOB_SECONDS = 1.0
WALL_GOAL = 1.15
REFUSED_GOAL = 0.10


def _quiet(counts: BatchCounts) -> None:
    pass


def _shape(shape: Shape) -> list[Row]:
    items = [{"prompt": f"paced {n}", "width": 256, "height": 256} for n in range(JOBS)]
    with (
        tempfile.TemporaryDirectory() as home,
        limited_api(shape, job_seconds=JOB_SECONDS) as (
            url,
            state,
        ),
    ):
        with Client(
            API_KEY, url, timeout=120, history=History(home), poll_schedule=TIGHT_POLLS
        ) as client:
            wall, result = timed(lambda: client.generate_many(items, on_progress=_quiet))
    assert isinstance(result, BatchResult)
    ideal = shape.ideal(JOBS, JOB_SECONDS)
    sent = state.admitted + state.refused
    share = state.refused / sent if sent else 0.0
    twice = state.made_twice()
    return [
        Row(
            "pacing",
            f"{JOBS} one-second jobs, {shape.name}: wall time",
            ideal,
            wall,
            "s",
            goal=WALL_GOAL,
            baseline_label="the limit-bound ideal: the burst at once, the rest at the rate, "
            "then one job",
            note=f"{JOBS - result.failed} images, {result.failed} failed; "
            f"{state.wasted:.0f} tokens the server offered left unused",
        ),
        Row(
            "pacing",
            f"same ({shape.name}): creates answered 429, share of creates sent",
            sent,
            state.refused,
            "requests",
            goal_text="≤ 10% of creates, none made twice",
            passed=share <= REFUSED_GOAL and twice == 0 and len(state.jobs) == JOBS,
            baseline_label="the creates sent",
            note=f"{state.refused} of {sent} creates answered 429 ({share:.0%}); "
            f"{len(state.jobs)} jobs made, {twice} made twice",
            details={"refused": state.refused, "sent": sent, "twice": twice},
        ),
    ]


def run(settings: Settings) -> list[Row]:
    # Quick mode runs the same shapes: the point is the shape, and 40 jobs is already small.
    return [row for shape in SHAPES for row in _shape(shape)]
