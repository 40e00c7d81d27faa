"""Moving the first release's history (one JSON file per job) into the database.

The first release wrote ``<home>/jobs/<job>.json`` records and ``<home>/locks/*.lock`` files;
its images in ``<home>/images/`` keep their names and are used as they are. On first open the
records are copied into the database in one transaction (a job already there is kept as it
is, so running this twice, or in two kernels at once, changes nothing). Only after that
commit are the files moved to ``<home>/jobs.migrated/``, kept until the user removes them;
a kernel that dies between the two simply copies them again next time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from miragic_nb._core.filenames import is_plain_name, safe_stem
from miragic_nb._store import store

log = logging.getLogger("miragic_nb")

#: Marks a first-release record file; anything else in ``jobs/`` is left alone.
_FORMAT = "miragic-nb.history"
LEGACY_FOLDER = "jobs"
MIGRATED_FOLDER = "jobs.migrated"
_LOCKS_FOLDER = "locks"
_TEXT_FIELDS = (
    "prompt",
    "model",
    "image_url",
    "base_url",
    "result_url",
    "error_message",
    "server_created_at",
    "reuse_key",
)
_NUMBER_FIELDS = ("elapsed_s", "processing_s", "credits_used")


def pending(home: Path) -> bool:
    """Whether ``home`` still has first-release record files to bring in."""
    try:
        return any(path.is_file() for path in (home / LEGACY_FOLDER).glob("*.json"))
    except OSError:
        return False


def import_records(connection: sqlite3.Connection, home: Path) -> list[Path]:
    """Copy every first-release record into the open transaction; the files it read."""
    folder = home / LEGACY_FOLDER
    try:
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries if e.name.endswith(".json") and e.is_file())
    except OSError:
        return []
    files = [folder / name for name in names]
    known = {job_id for (job_id,) in connection.execute("SELECT job_id FROM jobs")}
    rows: list[dict[str, Any]] = []
    events: list[tuple[str, str, str, str | None]] = []
    for path in files:
        parsed = _read(path)
        # A job already in the database was brought in before, or recorded since: newer.
        if parsed is None or parsed[0]["job_id"] in known:
            continue
        row, job_events = parsed
        known.add(row["job_id"])
        rows.append(row)
        events.extend((row["job_id"], *event) for event in job_events)
    store.save_jobs(connection, rows)
    store.add_events(connection, events)
    return files


def move_aside(home: Path, files: list[Path]) -> None:
    """Move imported record files to ``jobs.migrated/`` and drop the first release's locks.

    Best effort: whatever stays behind is imported again (a no-op) and moved next time.
    """
    source, target = home / LEGACY_FOLDER, home / MIGRATED_FOLDER
    try:
        if not target.exists():
            source.rename(target)  # one step for the usual case: the whole folder
            _return_unimported(target, source, {path.name for path in files})
        else:
            for path in files:
                with contextlib.suppress(FileNotFoundError):  # another kernel moved it first
                    path.replace(target / path.name)
            source.rmdir()
    except OSError as exc:
        log.debug("first-release history files not all moved aside yet: %s", exc)
    locks = home / _LOCKS_FOLDER
    try:
        for lock in locks.glob("*.lock"):
            lock.unlink(missing_ok=True)
        locks.rmdir()
    except OSError as exc:
        log.debug("first-release lock folder not removed: %s", exc)


def _return_unimported(moved: Path, source: Path, imported: set[str]) -> None:
    """Put back record files a first-release kernel wrote after they were read, so the next
    open brings them in."""
    late = [p for p in moved.glob("*.json") if p.name not in imported]
    if late:
        source.mkdir(mode=0o700, exist_ok=True)
        for path in late:
            path.replace(source / path.name)


def _read(path: Path) -> tuple[dict[str, Any], list[tuple[str, str, str | None]]] | None:
    """A record file as a ``jobs`` row and its events, read as the first release read it
    (a field of the wrong type is unknown); None, with a warning, when it is not a record."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return None  # another kernel brought it in and moved it aside meanwhile
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        log.warning("not migrating %s: unreadable (%s)", path, type(exc).__name__)
        return None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        log.warning("not migrating %s: not a miragic-nb history record", path)
        return None
    job_id = data.get("job_id")
    if not isinstance(job_id, str) or safe_stem(job_id) != path.stem:
        log.warning("not migrating %s: its job_id does not match its file name", path)
        return None
    created = store.normal_time(data.get("created_at")) or store.format_time(_modified(path))
    width, height = _size(data.get("image_size"))
    row = {
        "job_id": job_id,
        "status": store.as_str(data.get("status")) or "PENDING",
        "created_at": created,
        "updated_at": store.normal_time(data.get("updated_at")) or created,
        **{column: store.as_str(data.get(column)) for column in _TEXT_FIELDS},
        **{column: store.as_int(data.get(column)) for column in ("width", "height", "seed")},
        **{column: store.as_float(data.get(column)) for column in _NUMBER_FIELDS},
        "options": store.as_options(data.get("options")),
        "image": _image_name(data.get("image")),
        "image_width": width,
        "image_height": height,
    }
    events = data.get("events")
    return row, [
        (event["status"], at, store.as_str(event.get("error_message")))
        for event in (events if isinstance(events, list) else [])
        if isinstance(event, dict)
        and store.as_str(event.get("status"))
        and (at := store.normal_time(event.get("at")))
    ]


def _image_name(value: object) -> str | None:
    # The first release stored "images/<file>"; only that form is accepted, so an edited
    # record cannot point the loader at an arbitrary file.
    if not isinstance(value, str):
        return None
    folder, _, name = value.partition("/")
    return name if folder == "images" and is_plain_name(name) else None


def _size(value: object) -> tuple[int | None, int | None]:
    if isinstance(value, list) and len(value) == 2:
        width, height = store.as_int(value[0]), store.as_int(value[1])
        if width is not None and height is not None:
            return width, height
    return None, None


def _modified(path: Path) -> datetime:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
    except OSError:
        return datetime.now(timezone.utc)
