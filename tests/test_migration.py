"""Upgrading from the first release: its JSON records move into the database, losing nothing.

The first-release home in ``tests/data/first-release-home`` was written by the first
release's own code (``tests/first_release.py`` took it from git).
"""

from __future__ import annotations

import io
import json
import multiprocessing
import shutil
from pathlib import Path
from typing import Any

from PIL import Image

from miragic_nb._core.request import GenerationRequest
from miragic_nb._store.history import History, HistoryRecord
from miragic_nb._store.store import JOB_COLUMNS, parse_time
from tests.first_release import BASE, FIXTURE, JOBS, copy_fixture

#: The record fields stored under the same name in a first-release file.
JSON_FIELDS = [
    name
    for name in JOB_COLUMNS
    if name not in ("job_id", "created_at", "updated_at", "image", "image_width", "image_height")
]


def first_release_records() -> dict[str, dict[str, Any]]:
    records = {}
    for path in (FIXTURE / "jobs").glob("*.json"):
        data = json.loads(path.read_text("utf-8"))
        records[data["job_id"]] = data
    assert len(records) == len(JOBS)
    return records


def assert_same_as_first_release(record: HistoryRecord, data: dict[str, Any], home: Path) -> None:
    """Every field and every event of the first release's file, in the migrated record."""
    checked = {*JSON_FIELDS, "job_id", "created_at", "updated_at", "image_size", "events", "image"}
    assert set(data) - checked == {"format", "version"}  # nothing in the file goes unchecked
    assert record.job_id == data["job_id"]
    for name in JSON_FIELDS:
        assert getattr(record, name) == data.get(name), name
    assert record.created_at == parse_time(data["created_at"])
    assert record.updated_at == parse_time(data["updated_at"])
    assert record.image_size == (tuple(data["image_size"]) if "image_size" in data else None)
    assert [(e.status, e.at, e.error_message) for e in record.events] == [
        (e["status"], parse_time(e["at"]), e.get("error_message")) for e in data["events"]
    ]
    if "image" in data:
        assert record.path == home / data["image"]
        # The saved image is used where it is, byte for byte.
        assert record.path.read_bytes() == (FIXTURE / data["image"]).read_bytes()
    else:
        assert record.path is None


def test_every_field_event_and_image_moves_into_the_database(tmp_path: Path) -> None:
    home = copy_fixture(tmp_path / "home")
    store = History(home)

    records = store.records()
    expected = first_release_records()
    assert {r.job_id for r in records} == set(expected)
    for record in records:
        assert_same_as_first_release(record, expected[record.job_id], home)
        assert store.get(record.job_id) == record
    # Newest first, as before.
    assert [r.job_id for r in records] == [
        job_id for job_id, *_ in sorted(expected.items(), key=lambda kv: kv[1]["created_at"])
    ][::-1]

    # The old files are kept, moved aside, byte for byte; the lock files are gone.
    assert not (home / "jobs").exists()
    assert not (home / "locks").exists()
    assert not list(home.rglob("*.lock"))
    moved = sorted((home / "jobs.migrated").iterdir())
    assert [p.name for p in moved] == sorted(p.name for p in (FIXTURE / "jobs").iterdir())
    for path in moved:
        assert path.read_bytes() == (FIXTURE / "jobs" / path.name).read_bytes()


def test_a_seeded_result_made_before_the_upgrade_is_reused_after_it(tmp_path: Path) -> None:
    store = History(copy_fixture(tmp_path / "home"))
    for job_id, prompt, seed, ending in JOBS:
        request = GenerationRequest(
            prompt, model="turbo", width=512, height=384, seed=seed, enhance=True
        )
        image = store.reuse(request, base_url=BASE)
        if seed is None or ending in ("failed", "pending"):
            assert image is None, job_id
            continue
        assert image is not None, job_id
        assert image.metadata["job_id"] == job_id
        assert image.metadata["reused"] is True
        saved = FIXTURE / "images" / Path(str(image.metadata["path"])).name
        with Image.open(io.BytesIO(saved.read_bytes())) as original:
            assert image.tobytes() == original.convert(image.mode).tobytes()
    assert sum(row.reuses for row in store.usage()) == 4


def test_migrating_again_changes_nothing(tmp_path: Path) -> None:
    home = copy_fixture(tmp_path / "home")
    store = History(home)
    before = store.records()
    store.record_status("job-pending", "TIMEOUT", error_message="recorded after the upgrade")

    # A kernel that died between the commit and moving the files aside, or a first-release
    # kernel still running: the files are back in jobs/ and are read again on the next open.
    shutil.copytree(home / "jobs.migrated", home / "jobs")
    after = History(home).records()
    assert len(after) == len(before)
    changed = next(r for r in after if r.job_id == "job-pending")
    assert changed.status == "TIMEOUT"  # the database is newer than the old file: kept
    assert [r for r in after if r.job_id != "job-pending"] == [
        r for r in before if r.job_id != "job-pending"
    ]
    assert not (home / "jobs").exists()


def test_a_first_release_record_written_after_the_upgrade_is_brought_in(tmp_path: Path) -> None:
    home = copy_fixture(tmp_path / "home")
    store = History(home)
    assert len(store.records()) == len(JOBS)
    # A kernel still running the first release records one more job.
    late = json.loads((home / "jobs.migrated" / "job-done-png.json").read_text())
    late.update(job_id="job-late", image=None, events=[])
    (home / "jobs").mkdir()
    (home / "jobs" / "job-late.json").write_text(json.dumps(late))
    record = store.get("job-late")
    assert record is not None
    assert (record.prompt, record.status, record.path) == (late["prompt"], "COMPLETED", None)


def _open_and_count(home: str, start: Any, results: Any) -> None:
    start.wait(30)
    records = History(home).records()
    results.put((len(records), sum(len(r.events) for r in records)))


def test_two_kernels_opening_at_once_migrate_once(tmp_path: Path) -> None:
    home = copy_fixture(tmp_path / "home")
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    kernels = [
        context.Process(target=_open_and_count, args=(str(home), start, results)) for _ in range(4)
    ]
    for kernel in kernels:
        kernel.start()
    start.set()
    for kernel in kernels:
        kernel.join(timeout=120)
    assert [k.exitcode for k in kernels] == [0] * len(kernels)

    events = sum(len(data["events"]) for data in first_release_records().values())
    assert [results.get(timeout=5) for _ in kernels] == [(len(JOBS), events)] * len(kernels)
    records = History(home).records()
    expected = first_release_records()
    for record in records:
        assert_same_as_first_release(record, expected[record.job_id], home)
    assert not (home / "jobs").exists()
    assert len(list((home / "jobs.migrated").iterdir())) == len(JOBS)
