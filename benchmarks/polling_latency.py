"""Benchmark 1: latency added by polling, and the status reads it costs.

Added latency = (time the caller has the decoded image) - (the job's duration on the server,
``processingTimeMs``). The baseline is the reference's loop (read at once, then every 2 s);
ours is ``Client.generate`` with the default ``PollSchedule`` and a ``DurationLearner`` that
starts empty. Both run at the same time, job for job, against the same emulator.

(a) the server reports ``progress``; jobs of mixed length, 0.5-6 s.
(b) no ``progress`` (like the reference's example); jobs of one model, 3 s ± 10%.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .common import STATUS_PATH, Row, Settings, client_for, emulator, mean
from .reference import reference_generate

SIZE = 512  # small renders, so the emulator's drawing never delays a job's end


@dataclass(frozen=True)
class Sample:
    latency_s: float
    reads: int


def _duration_from_prompt(form: Mapping[str, str]) -> float:
    """Regime (a): each prompt names its job's length, e.g. ``"... [2.75s]"``."""
    match = re.search(r"\[([0-9.]+)s\]", form.get("prompt", ""))
    return float(match.group(1)) if match else 2.0


def _run_pair(
    durations: Sequence[float], *, report_progress: bool, job_seconds: object, jitter: float
) -> tuple[list[Sample], list[Sample]]:
    with (
        emulator(job_seconds=job_seconds, jitter=jitter, report_progress=report_progress) as emu,
        client_for(emu) as client,
    ):
        ours: list[Sample] = []
        baseline: list[Sample] = []

        def run_ours() -> None:
            for n, seconds in enumerate(durations):
                prompt = f"ours {n} [{seconds:.3f}s]"
                started = time.perf_counter()
                image = client.generate(prompt, model="flux", width=SIZE, height=SIZE)
                elapsed = time.perf_counter() - started
                meta = image.metadata
                reads = emu.count("GET", STATUS_PATH, job_id=meta["job_id"])
                ours.append(Sample(elapsed - meta["processing_s"], reads))

        def run_baseline() -> None:
            for n, seconds in enumerate(durations):
                result = reference_generate(
                    emu.url, emu.api_key, f"reference {n} [{seconds:.3f}s]", width=SIZE, height=SIZE
                )
                reads = emu.count("GET", STATUS_PATH, job_id=result.job_id)
                baseline.append(Sample(result.elapsed_s - result.processing_s, reads))

        worker = threading.Thread(target=run_baseline, name="reference-loop")
        worker.start()
        run_ours()
        worker.join()
        return ours, baseline


def _rows(
    regime: str, ours: list[Sample], baseline: list[Sample], goals: tuple[float, float]
) -> list[Row]:
    label = "reference loop: read at once, then every 2 s"
    details = {
        "ours_latency_s": [round(s.latency_s, 4) for s in ours],
        "baseline_latency_s": [round(s.latency_s, 4) for s in baseline],
        "ours_reads": [s.reads for s in ours],
        "baseline_reads": [s.reads for s in baseline],
    }
    return [
        Row(
            f"1{regime} polling",
            "added latency per job (mean)",
            mean([s.latency_s for s in baseline]),
            mean([s.latency_s for s in ours]),
            "s",
            goal=goals[0],
            baseline_label=label,
            details=details,
        ),
        Row(
            f"1{regime} polling",
            "status reads per job (mean)",
            mean([float(s.reads) for s in baseline]),
            mean([float(s.reads) for s in ours]),
            "reads",
            goal=goals[1],
            baseline_label=label,
        ),
    ]


def run(settings: Settings) -> list[Row]:
    rng = random.Random(6)
    count_a = settings.pick(6, 16)
    # Mixed lengths spread evenly over 0.5-6 s (shuffled), so no one phase of the 2 s loop wins.
    mixed = [0.5 + 5.5 * (n + rng.random()) / count_a for n in range(count_a)]
    rng.shuffle(mixed)
    ours_a, base_a = _run_pair(
        mixed, report_progress=True, job_seconds=_duration_from_prompt, jitter=0.0
    )
    count_b = settings.pick(5, 10)
    ours_b, base_b = _run_pair([3.0] * count_b, report_progress=False, job_seconds=3.0, jitter=0.1)
    return [
        *_rows("a", ours_a, base_a, (0.25, 1.0)),
        *_rows("b", ours_b, base_b, (0.5, 1.5)),
    ]
