"""Benchmark 1: latency added by polling, and the status reads it costs, per scenario.

Added latency = (time the caller has the decoded image) - (the job's duration on the server,
``processingTimeMs``). The baseline is the reference's loop (read at once, then every 2 s);
ours is ``Client.generate`` with the default ``PollSchedule`` and a ``DurationLearner`` that
starts empty. In each scenario both run job for job in lockstep (each pair of jobs is created
together) against one emulator, so they meet the same conditions; the scenarios run side by
side, each with its own emulator, so the whole benchmark takes about as long as the longest.

Scenarios (durations drawn from seeded distributions, all under one model and size):

- a: the server reports ``progress``; mixed lengths spread evenly over 0.5-6 s.
- b: no ``progress`` (like the reference's example); 3 s ± 10%.
- mixed: no ``progress``; lengths log-normal around 2 s, clipped to 0.7-5 s (prompts differ).
- drift: no ``progress``; lengths growing from 2 s by 5% a job, ± 10% (a server slowing down
  as its load builds, as its own ``processingTimeMs`` shows it).
- similar: no ``progress``; a longer stream of similar short jobs, 1.2 s ± 10%.
- after-mix: the same kind of stream, but our client has already seen 16 jobs of 0.7-5 s of
  that model and size (its ``DurationLearner`` is fed their durations first; the reference
  loop remembers nothing anyway).
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from miragic_nb._core.polling import DurationLearner

from .common import STATUS_PATH, Row, Settings, client_for, emulator, mean
from .reference import reference_generate

SIZE = 512  # small renders, so the emulator's drawing never delays a job's end
LABEL = "reference loop: read at once, then every 2 s"


@dataclass(frozen=True)
class Sample:
    latency_s: float
    reads: int


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    durations: Sequence[float]
    report_progress: bool
    #: Highest acceptable ratios ours / reference: added latency, status reads.
    goals: tuple[float, float]
    #: Durations of earlier jobs of the same kind our client has already learned.
    history: Sequence[float] = ()


def _duration_from_prompt(form: Mapping[str, str]) -> float:
    """Each prompt names its job's length, e.g. ``"... [2.75s]"``."""
    match = re.search(r"\[([0-9.]+)s\]", form.get("prompt", ""))
    return float(match.group(1)) if match else 2.0


def _run_pair(scenario: Scenario) -> tuple[list[Sample], list[Sample]]:
    """Our client and the reference loop, one job each at a time, each pair started together."""
    learned = DurationLearner()
    for seconds in scenario.history:
        learned.observe("flux", SIZE, SIZE, seconds, progress=scenario.report_progress)
    with (
        emulator(
            job_seconds=_duration_from_prompt,
            jitter=0.0,
            report_progress=scenario.report_progress,
        ) as emu,
        client_for(emu, durations=learned) as client,
    ):
        together = threading.Barrier(2, timeout=120)
        ours: list[Sample] = []
        baseline: list[Sample] = []

        def run_ours() -> None:
            for n, seconds in enumerate(scenario.durations):
                together.wait()
                prompt = f"ours {n} [{seconds:.3f}s]"
                started = time.perf_counter()
                image = client.generate(prompt, model="flux", width=SIZE, height=SIZE)
                elapsed = time.perf_counter() - started
                meta = image.metadata
                reads = emu.count("GET", STATUS_PATH, job_id=meta["job_id"])
                ours.append(Sample(elapsed - meta["processing_s"], reads))

        def run_baseline() -> None:
            for n, seconds in enumerate(scenario.durations):
                together.wait()
                prompt = f"reference {n} [{seconds:.3f}s]"
                result = reference_generate(emu.url, emu.api_key, prompt, width=SIZE, height=SIZE)
                reads = emu.count("GET", STATUS_PATH, job_id=result.job_id)
                baseline.append(Sample(result.elapsed_s - result.processing_s, reads))

        worker = threading.Thread(target=run_baseline, name=f"reference-loop-{scenario.name}")
        worker.start()
        try:
            run_ours()
        finally:
            worker.join()
        return ours, baseline


def _rows(scenario: Scenario, ours: list[Sample], baseline: list[Sample]) -> list[Row]:
    details = {
        "durations_s": [round(d, 3) for d in scenario.durations],
        "ours_latency_s": [round(s.latency_s, 4) for s in ours],
        "baseline_latency_s": [round(s.latency_s, 4) for s in baseline],
        "ours_reads": [s.reads for s in ours],
        "baseline_reads": [s.reads for s in baseline],
    }
    name = f"1{scenario.name} polling"
    latency_goal, reads_goal = scenario.goals
    return [
        Row(
            name,
            f"added latency per job (mean), {scenario.description}",
            mean([s.latency_s for s in baseline]),
            mean([s.latency_s for s in ours]),
            "s",
            goal=latency_goal,
            baseline_label=LABEL,
            details=details,
        ),
        Row(
            name,
            "status reads per job (mean), same jobs",
            mean([float(s.reads) for s in baseline]),
            mean([float(s.reads) for s in ours]),
            "reads",
            goal=reads_goal,
            baseline_label=LABEL,
        ),
    ]


def scenarios(settings: Settings) -> list[Scenario]:
    rng = random.Random(6)

    def draws(count: int, draw: Callable[[int], float]) -> list[float]:
        return [round(draw(n), 3) for n in range(count)]

    count_a = settings.pick(6, 16)
    # Spread evenly over 0.5-6 s (shuffled), so no one phase of the 2 s loop wins.
    spread = draws(count_a, lambda n: 0.5 + 5.5 * (n + rng.random()) / count_a)
    rng.shuffle(spread)
    count_b = settings.pick(5, 10)
    three = draws(count_b, lambda _: 3.0 * rng.uniform(0.9, 1.1))
    mixed = draws(
        settings.pick(10, 24),
        lambda _: min(5.0, max(0.7, math.exp(rng.gauss(math.log(2.0), 0.5)))),
    )
    drift = draws(settings.pick(8, 16), lambda n: 2.0 * 1.05**n * rng.uniform(0.9, 1.1))
    similar = draws(settings.pick(8, 16), lambda _: 1.2 * rng.uniform(0.9, 1.1))
    seen = draws(16, lambda _: rng.uniform(0.7, 5.0))
    after_mix = draws(settings.pick(6, 12), lambda _: 3.0 * rng.uniform(0.9, 1.1))

    def silent(
        name: str, what: str, durations: list[float], history: Sequence[float] = ()
    ) -> Scenario:
        """A scenario without ``progress``: the goal is half the lateness, 1.5x the reads."""
        label = f"no `progress`, {len(durations)} jobs {what}"
        return Scenario(name, label, durations, False, (0.5, 1.5), history)

    return [
        Scenario("a", f"`progress`, {count_a} jobs of 0.5-6 s", spread, True, (0.25, 1.0)),
        silent("b", "of 3 s ± 10%", three),
        silent("mixed", "log-normal around 2 s in 0.7-5 s", mixed),
        silent("drift", "growing from 2 s by 5% a job", drift),
        silent("similar", "of 1.2 s ± 10%", similar),
        silent("after-mix", "of 3 s ± 10%, after 16 jobs of 0.7-5 s", after_mix, seen),
    ]


def run(settings: Settings) -> list[Row]:
    plan = scenarios(settings)
    with ThreadPoolExecutor(max_workers=len(plan), thread_name_prefix="polling") as pool:
        results = list(pool.map(_run_pair, plan))
    return [
        row for s, (ours, base) in zip(plan, results, strict=True) for row in _rows(s, ours, base)
    ]
