"""Benchmark: many images -- a paced batch against a create rate limit, gathered
``agenerate`` calls, and the batch command's peak memory over a large file.

- 200 jobs (40 with ``--quick``) through ``generate_many`` while the emulator admits 4
  creates/s (burst 4): wall time against the limit-bound ideal (goal ≤ 1.1×), creates answered
  429 (≤ 10 % of the jobs) and jobs made twice (none);
- 16 concurrent ``agenerate`` calls of 2 s jobs against one job (goal ≤ 1.2×);
- ``python -m miragic_nb batch`` over 1,000 prompts (100 with ``--quick``): peak resident
  memory of the process (goal ≤ 200 MB).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from miragic_nb._engine.batch import BatchResult
from miragic_nb._store.history import History
from miragic_nb.emulator import RateLimit

from .common import CREATE_PATH, TIGHT_POLLS, Row, Settings, client_for, emulator, timed

CREATE_RATE = 4.0
CREATE_BURST = 4
BATCH_JOB_SECONDS = 0.5
ASYNC_JOB_SECONDS = 2.0
ASYNC_CALLS = 16
MEMORY_GOAL_MB = 200.0
#: Runs the command, then prints its own peak resident memory (kB) as the last stderr line.
#: VmHWM belongs to the process image: a fork of this (large) benchmark process before the
#: exec, which getrusage's ru_maxrss would count, is not in it.
_PEAK_RUNNER = """
import sys
from miragic_nb.__main__ import main
code = main(sys.argv[1:])
with open("/proc/self/status") as status:
    peak = next(line for line in status if line.startswith("VmHWM"))
print(peak.split()[1], file=sys.stderr)
sys.exit(code)
"""


def _paced_batch(settings: Settings) -> list[Row]:
    jobs = settings.pick(40, 200)
    items = [{"prompt": f"paced {n}", "width": 256, "height": 256} for n in range(jobs)]
    with tempfile.TemporaryDirectory() as home, emulator(job_seconds=BATCH_JOB_SECONDS) as emu:
        emu.limits.create = RateLimit(CREATE_RATE, burst=CREATE_BURST)
        with client_for(emu, history=History(home), poll_schedule=TIGHT_POLLS) as client:
            wall, result = timed(lambda: client.generate_many(items))
        refused = emu.count("POST", CREATE_PATH, status=429)
        twice = sum(1 for n in Counter(j.prompt for j in emu.jobs.values()).values() if n > 1)
    assert isinstance(result, BatchResult)
    # The fastest any client can go: the burst at once, the rest at the rate, then one job.
    ideal = (jobs - CREATE_BURST) / CREATE_RATE + BATCH_JOB_SECONDS
    return [
        Row(
            "many",
            f"{jobs}-job batch, 4 creates/s allowed: wall time",
            ideal,
            wall,
            "s",
            goal=1.1,
            baseline_label="the limit-bound ideal: (jobs - burst) / rate + one job",
            note=f"{jobs - result.failed} images, {result.failed} failed",
        ),
        Row(
            "many",
            "same: creates answered 429, as a share of the jobs",
            jobs,
            refused,
            "requests",
            goal_text="≤ 10% of jobs, none made twice",
            passed=refused <= jobs * 0.1 and twice == 0,
            baseline_label="the jobs of the batch",
            note=f"{refused} creates answered 429; {twice} jobs made twice",
            details={"refused": refused, "twice": twice},
        ),
    ]


def _gathered(settings: Settings) -> list[Row]:
    with tempfile.TemporaryDirectory() as home, emulator(job_seconds=ASYNC_JOB_SECONDS) as emu:
        with client_for(emu, history=History(home)) as client:

            async def many() -> None:
                await asyncio.gather(
                    *(client.agenerate(f"gathered {n}") for n in range(ASYNC_CALLS))
                )

            asyncio.run(client.agenerate("warm-up"))
            one, _ = timed(lambda: asyncio.run(client.agenerate("single")))
            wall, _ = timed(lambda: asyncio.run(many()))
    return [
        Row(
            "many",
            f"{ASYNC_CALLS} gathered `agenerate` calls of 2 s jobs: wall time",
            one,
            wall,
            "s",
            goal=1.2,
            baseline_label="one `agenerate` call",
        )
    ]


def _cli_memory(settings: Settings) -> list[Row]:
    count = settings.pick(100, 1000)
    with tempfile.TemporaryDirectory() as folder, emulator(job_seconds=0.05) as emu:
        source = Path(folder) / "prompts.txt"
        source.write_text("".join(f"memory test {n}\n" for n in range(count)))
        environment = {
            **os.environ,
            "MIRAGIC_API_KEY": emu.api_key,
            "MIRAGIC_BASE_URL": emu.url,
            "MIRAGIC_HOME": str(Path(folder) / "home"),
        }
        command = [sys.executable, "-c", _PEAK_RUNNER, "batch", str(source)]
        command += ["--out", str(Path(folder) / "out"), "--size", "512x512"]
        wall, finished = timed(
            lambda: subprocess.run(
                command, env=environment, capture_output=True, timeout=1800, check=False
            )
        )
        written = len(list((Path(folder) / "out").glob("*.jpg")))
    peak_mb = int(finished.stderr.decode().splitlines()[-1]) / 1024
    return [
        Row(
            "many",
            f"`python -m miragic_nb batch` over {count} prompts: peak resident memory",
            MEMORY_GOAL_MB,
            peak_mb,
            "MB",
            goal_text=f"≤ {MEMORY_GOAL_MB:g} MB",
            passed=peak_mb <= MEMORY_GOAL_MB and finished.returncode == 0,
            baseline_label="the memory goal",
            note=f"{written} images written in {wall:.1f} s, exit {finished.returncode}",
        )
    ]


def run(settings: Settings) -> list[Row]:
    return [*_paced_batch(settings), *_gathered(settings), *_cli_memory(settings)]
