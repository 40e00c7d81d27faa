"""Benchmark 3: eight 2 s jobs at once, through the client API and ``%%miragic --n 8``.

Baseline: one job, the same way, in the same run (after a warm-up job). A rate-limited variant
answers bursts of 429 + ``Retry-After`` to creates and status reads; the emulator's request log
shows whether any job was lost or created twice.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from miragic_nb._core.images import GeneratedImage
from miragic_nb._core.request import GenerationRequest
from miragic_nb.client import Client
from miragic_nb.emulator import Emulator, Fault

from .common import CREATE_PATH, Row, Settings, client_for, emulator, mean, timed

BATCH = 8
JOB_SECONDS = 2.0


def _batch(client: Client, label: str) -> tuple[float, list[GeneratedImage], Counter[int]]:
    updates: Counter[int] = Counter()

    def one(n: int) -> GeneratedImage:
        def seen(_: object) -> None:
            updates[n] += 1

        request = GenerationRequest(f"{label} {n}", model="flux", width=1024, height=1024)
        return client.generate(request, on_progress=seen)

    with ThreadPoolExecutor(BATCH) as pool:
        wall, images = timed(lambda: list(pool.map(one, range(BATCH))))
    return wall, images, updates


def _client_api(settings: Settings) -> list[Row]:
    with emulator(job_seconds=JOB_SECONDS, jitter=0.05) as emu, client_for(emu) as client:
        client.generate("warm-up", width=1024, height=1024)
        singles = [
            timed(lambda: client.generate("single", width=1024, height=1024))[0]
            for _ in range(settings.pick(1, 3))
        ]
        wall, images, updates = _batch(client, "batch")
    one = mean(singles)
    fewest = min(updates[n] for n in range(BATCH))
    return [
        Row(
            "3 batch",
            "8 × 2 s jobs via `Client.generate` in 8 threads: wall time",
            one,
            wall,
            "s",
            goal=1.25,
            baseline_label="one job through the same client",
            note=f"{len(images)} images; status updates per job: at least {fewest}",
        )
    ]


def _rate_limited(settings: Settings) -> list[Row]:
    with emulator(job_seconds=JOB_SECONDS, jitter=0.05) as emu, client_for(emu) as client:
        client.generate("warm-up", width=1024, height=1024)
        one, _ = timed(lambda: client.generate("single", width=1024, height=1024))
        emu.clear_requests()
        before = set(emu.jobs)
        emu.faults.push("create", Fault.rate_limited(1), times=6)
        emu.faults.push("status", Fault.rate_limited(1), times=6)
        wall, images, _ = _batch(client, "limited")
        created = set(emu.jobs) - before
        returned = [image.metadata["job_id"] for image in images]
        posts = emu.count("POST", CREATE_PATH)
        refused = emu.count("POST", CREATE_PATH, status=429)
    intact = len(created) == BATCH and sorted(returned) == sorted(created)
    return [
        Row(
            "3 batch",
            "same, create and status answering 429 bursts: jobs created",
            BATCH,
            len(created),
            "jobs",
            goal_text="8 jobs, 8 images, none lost or doubled",
            passed=intact and posts - refused == BATCH,
            baseline_label="the 8 jobs asked for",
            note=(
                f"{posts} create POSTs, {refused} answered 429 (no job made) and retried after "
                f"Retry-After; wall {wall:.2f} s vs one job {one:.2f} s"
            ),
            details={"posts": posts, "refused": refused, "created": len(created)},
        )
    ]


@contextmanager
def _magic_shell(emu: Emulator) -> Iterator[Any]:
    from IPython.core.interactiveshell import InteractiveShell

    saved = {k: os.environ.get(k) for k in ("MIRAGIC_API_KEY", "MIRAGIC_BASE_URL", "MIRAGIC_HOME")}
    with tempfile.TemporaryDirectory() as home:
        os.environ.update(MIRAGIC_API_KEY=emu.api_key, MIRAGIC_BASE_URL=emu.url, MIRAGIC_HOME=home)
        try:
            shell = InteractiveShell.instance()
            shell.run_line_magic("load_ext", "miragic_nb")
            shell.run_line_magic("config", "Miragic.progress = 'text'")
            yield shell
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _magic(settings: Settings) -> list[Row]:
    from IPython.utils.capture import capture_output

    with emulator(job_seconds=JOB_SECONDS, jitter=0.05) as emu, _magic_shell(emu) as shell:

        def cell(line: str) -> Any:
            with capture_output():  # type: ignore[no-untyped-call]
                return shell.run_cell_magic("miragic", line, "a lighthouse at dusk")

        cell("--fresh")  # warm-up
        singles = [timed(lambda: cell("--fresh"))[0] for _ in range(settings.pick(1, 3))]
        wall, images = timed(lambda: cell("--fresh --n 8"))
    count = len(images) if isinstance(images, list) else 0
    return [
        Row(
            "3 batch",
            "`%%miragic --n 8` (2 s jobs): wall time",
            mean(singles),
            wall,
            "s",
            goal=1.25,
            baseline_label="`%%miragic` with one job",
            note=f"{count} images returned",
        )
    ]


def run(settings: Settings) -> list[Row]:
    return [*_client_api(settings), *_rate_limited(settings), *_magic(settings)]
