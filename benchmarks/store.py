"""Benchmark 7: the history database at scale.

Seeded reuse and ``records(10)`` (what ``%miragic history 10`` runs) with 100,000 records,
each against the same measure with 1,000 records in the same run: indexed queries stay flat.
Then the first open of a home holding 20,000 first-release JSON records (the migration), and
one record write. Quick mode uses 5,000 / 100 records and 2,000 JSON files.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from miragic_nb._core.images import GeneratedImage
from miragic_nb._core.request import GenerationRequest
from miragic_nb._core.states import COMPLETED
from miragic_nb._store import store
from miragic_nb._store.history import History, reuse_key

from .common import Row, Settings
from .photo import photo_like_jpeg

BASE = "http://127.0.0.1:8765"
FIRST_RELEASE_RECORD = (
    Path(__file__).resolve().parent.parent
    / "tests"
    / "data"
    / "first-release-home"
    / "jobs"
    / "job-timeout-then-done.json"
)


def _median_time(action: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _request(n: int) -> GenerationRequest:
    return GenerationRequest(f"a lighthouse at dusk, variation {n}", model="turbo", seed=n)


def _filled(home: Path, count: int) -> tuple[History, GenerationRequest]:
    """A history of ``count`` completed jobs (written in bulk), one with a real saved image."""
    history = History(home)
    target = GenerationRequest("the one result to reuse", model="turbo", seed=7)
    history.record_created("target", target, base_url=BASE)
    meta = {"job_id": "target", **target.describe(), "base_url": BASE, "credits_used": 1.0}
    history.record_result(GeneratedImage.from_bytes(photo_like_jpeg(1024, 1024), meta))
    database = store.Database(history.home)
    with database.writing() as connection:
        for n in range(count - 1):
            request, at = _request(n), store.now()
            row = {
                "job_id": f"job-{n:06d}",
                "status": COMPLETED,
                "created_at": at,
                "updated_at": at,
                **request.describe(),
                "base_url": BASE,
                "image": f"job-{n:06d}.jpg",
                "credits_used": 1.0,
                "reuse_key": reuse_key(request, base_url=BASE),
            }
            store.save_jobs(connection, [row])
            store.add_event(connection, row["job_id"], COMPLETED, at, None)
    return history, target


def _lookups(history: History, target: GenerationRequest, repeats: int) -> dict[str, float]:
    return {
        "reuse": _median_time(lambda: history.reuse(target, base_url=BASE), repeats),
        "records": _median_time(lambda: history.records(10), repeats),
    }


def _scaling(settings: Settings) -> list[Row]:
    small, large = settings.pick((100, 5_000), (1_000, 100_000))
    repeats = settings.pick(5, 25)
    timings: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for count in (small, large):
            timings[count] = _lookups(*_filled(Path(scratch) / str(count), count), repeats)
    measures = {
        "reuse": f"seeded reuse lookup, {large:,} records",
        "records": f"`records(10)` (`%miragic history 10`), {large:,} records",
    }
    return [
        Row(
            "7 store",
            measure,
            timings[small][name],
            timings[large][name],
            "s",
            goal=2.0,
            baseline_label=f"the same with {small:,} records",
            note="includes decoding the saved image and counting the reuse"
            if name == "reuse"
            else "",
        )
        for name, measure in measures.items()
    ]


def _first_release_home(home: Path, count: int) -> None:
    """``count`` first-release record files, copies of one the first release wrote."""
    template = json.loads(FIRST_RELEASE_RECORD.read_text("utf-8"))
    folder = home / "jobs"
    folder.mkdir(parents=True)
    for n in range(count):
        job_id = f"job-{n:06d}"
        record = {**template, "job_id": job_id, "prompt": f"{template['prompt']} {n}"}
        (folder / f"{job_id}.json").write_text(json.dumps(record, indent=2, sort_keys=True))


def _migration(settings: Settings) -> list[Row]:
    count = settings.pick(2_000, 20_000)
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch) / "home"
        _first_release_home(home, count)
        files = sorted((home / "jobs").glob("*.json"))
        started = time.perf_counter()
        for path in files:
            json.loads(path.read_bytes())
        reading = time.perf_counter() - started
        started = time.perf_counter()
        migrated = History(home).records(10)
        seconds = time.perf_counter() - started
        if len(migrated) != 10 or (home / "jobs").exists():
            raise RuntimeError("the first-release records were not migrated")
    return [
        Row(
            "7 store",
            f"first open of {count:,} first-release JSON records (the migration)",
            reading,
            seconds,
            "s",
            goal_text="≤ 5 s",
            passed=seconds <= 5.0,
            baseline_label="reading and parsing the JSON files alone",
        )
    ]


def _write(settings: Settings) -> list[Row]:
    repeats = settings.pick(20, 200)
    with tempfile.TemporaryDirectory() as scratch:
        history = History(Path(scratch) / "home")
        history.record_created("job", _request(1), base_url=BASE)
        counter = iter(range(10**9))
        ours = _median_time(
            lambda: history.record_status("job", "TIMEOUT", error_message=f"{next(counter)}"),
            repeats,
        )
        bare = sqlite3.connect(Path(scratch) / "bare.sqlite3", isolation_level=None)
        bare.execute("PRAGMA journal_mode=WAL")
        bare.execute("PRAGMA synchronous=FULL")
        bare.execute("CREATE TABLE t (n INTEGER)")
        floor = _median_time(lambda: bare.execute("INSERT INTO t VALUES (1)"), repeats)
        bare.close()
    return [
        Row(
            "7 store",
            "one record write (`record_status`)",
            floor,
            ours,
            "s",
            goal_text="≤ 1 ms",
            passed=ours <= 0.001,
            baseline_label="one bare INSERT, committed with the same sync to disk (WAL, FULL)",
            note="every commit is synced to disk, so a job id survives a power cut too; "
            "the baseline is that sync alone",
        )
    ]


def run(settings: Settings) -> list[Row]:
    return [*_scaling(settings), *_migration(settings), *_write(settings)]
