"""The history database: one SQLite file that several kernels (processes) share.

WAL mode lets readers go on while one kernel writes; a busy timeout makes writers queue
instead of failing; every change is one transaction, so a kernel killed mid-write leaves the
last committed state. ``PRAGMA user_version`` is the schema version: a newer file, or one
that is not a database, is refused with a one-line ``HistoryError`` and never touched.

Tables: ``jobs`` (one row per job), ``events`` (its status changes), ``reuses`` (each time
a saved result was returned instead of paying for a new job), ``batch_items`` (which job each
item of a batch has, and the intent to create it written before the create) and ``ledger``
(the credits each kernel session spent). A later schema version adds its
tables as one more step in ``_SCHEMA_STEPS``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sqlite3
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from miragic_nb._core.errors import HistoryCorruptError, HistoryError, HistoryTooNewError
from miragic_nb._core.request import FLAGS
from miragic_nb._core.urls import strip_userinfo

DATABASE_NAME = "history.sqlite3"
#: Writers wait this long for another kernel's transaction before giving up.
BUSY_TIMEOUT_S = 30.0
#: Status changes kept per job; older ones are dropped so a job's history stays small.
MAX_EVENTS = 100

#: Each step takes the schema from version ``index`` to ``index + 1``.
_SCHEMA_STEPS = (
    """
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        prompt TEXT,
        model TEXT,
        width INTEGER,
        height INTEGER,
        seed INTEGER,
        image_url TEXT,
        options TEXT,
        base_url TEXT,
        image TEXT,
        result_url TEXT,
        error_message TEXT,
        elapsed_s REAL,
        processing_s REAL,
        credits_used REAL,
        server_created_at TEXT,
        image_width INTEGER,
        image_height INTEGER,
        reuse_key TEXT
    );
    CREATE INDEX jobs_by_reuse_key ON jobs (reuse_key, created_at, updated_at, job_id);
    CREATE INDEX jobs_by_creation ON jobs (created_at, updated_at, job_id);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL,
        status TEXT NOT NULL,
        at TEXT NOT NULL,
        error_message TEXT
    );
    CREATE INDEX events_by_job ON events (job_id, id);
    CREATE TABLE reuses (
        id INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL,
        at TEXT NOT NULL
    );
    CREATE INDEX reuses_by_time ON reuses (at);
    """,
    # Batches: the intent to create an item's job is written before the create is sent, and
    # the job id next to it once the answer is read; an intent without an id after a crash
    # is a create whose answer was lost. The ledger counts the credits each session spent.
    """
    CREATE TABLE batch_items (
        batch_key TEXT NOT NULL,
        item INTEGER NOT NULL,
        job_id TEXT,
        intent_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (batch_key, item)
    );
    CREATE TABLE ledger (
        id INTEGER PRIMARY KEY,
        session TEXT NOT NULL,
        job_id TEXT NOT NULL,
        at TEXT NOT NULL
    );
    CREATE INDEX ledger_by_session ON ledger (session);
    """,
)
SCHEMA_VERSION = len(_SCHEMA_STEPS)

JOB_COLUMNS = (
    "job_id",
    "status",
    "created_at",
    "updated_at",
    "prompt",
    "model",
    "width",
    "height",
    "seed",
    "image_url",
    "options",
    "base_url",
    "image",
    "result_url",
    "error_message",
    "elapsed_s",
    "processing_s",
    "credits_used",
    "server_created_at",
    "image_width",
    "image_height",
    "reuse_key",
)
_URL_COLUMNS = ("image_url", "base_url", "result_url")
_NORMAL_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")
#: Question marks for a chunk of ``IN (...)``; well under SQLite's variable limit.
_CHUNK = 500


class Database:
    """The database file under one data directory.

    One connection, kept open while this object lives (closing the last connection to a WAL
    database checkpoints it, which would cost every write another sync) and shared by the
    process's threads one transaction at a time. A forked child opens its own.
    """

    def __init__(self, home: Path) -> None:
        self.path = home / DATABASE_NAME
        self._lock = threading.RLock()
        self._opened: tuple[int, sqlite3.Connection] | None = None

    def exists(self) -> bool:
        return self.path.is_file()

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A connection whose queries all see one consistent snapshot."""
        with self._transaction("BEGIN") as connection:
            yield connection

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it is committed, or (on any error) none of it.

        ``BEGIN IMMEDIATE`` takes the write lock first, so a read-modify-write in here cannot
        interleave with another kernel's.
        """
        with self._transaction("BEGIN IMMEDIATE") as connection:
            yield connection

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        with self._lock, self._translated():
            connection = self._connection()
            # Checked every time: a newer miragic-nb may have upgraded the file meanwhile.
            self._version(connection)
            connection.execute(begin)
            try:
                yield connection
            except BaseException:
                connection.rollback()
                raise
            connection.commit()

    def _connection(self) -> sqlite3.Connection:
        if self._opened is not None and self._opened[0] == os.getpid():
            return self._opened[1]
        connection = self._open()
        self._opened = (os.getpid(), connection)
        weakref.finalize(self, connection.close)
        return connection

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        connection = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            # Read before anything is written: a newer or foreign file stays as it is.
            version = self._version(connection)
            if version < SCHEMA_VERSION:
                self._upgrade(connection)
            # A job id must survive a power cut too, not only a killed process: sync on commit.
            connection.execute("PRAGMA synchronous=FULL")
        except BaseException:
            connection.close()
            raise
        return connection

    def _version(self, connection: sqlite3.Connection) -> int:
        version = int(connection.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise HistoryTooNewError(
                f"the history database {self.path} was written by a newer miragic-nb (schema "
                f"{version}; this version reads up to {SCHEMA_VERSION}): upgrade miragic-nb, "
                "or point MIRAGIC_HOME elsewhere; the file was left as it is"
            )
        return version

    def _upgrade(self, connection: sqlite3.Connection) -> None:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("BEGIN IMMEDIATE")
        try:
            # Another kernel may have upgraded it while this one waited for the lock.
            for step in _SCHEMA_STEPS[self._version(connection) :]:
                for statement in step.split(";"):
                    if statement.strip():
                        connection.execute(statement)
            connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            connection.rollback()
            raise
        connection.commit()

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """SQLite and file-system errors as one-line ``HistoryError``s."""
        try:
            yield
        except HistoryError:
            raise
        except sqlite3.Error as exc:
            if type(exc) is sqlite3.DatabaseError:  # "file is not a database", "malformed"
                raise HistoryCorruptError(
                    f"the history database {self.path} is damaged or not a database ({exc}); "
                    "it was left as it is: move it aside to start a new history"
                ) from exc
            raise HistoryError(f"the history database {self.path} failed: {exc}") from exc
        except OSError as exc:
            raise HistoryError(f"the history in {self.path.parent} failed: {exc}") from exc


# -- rows ------------------------------------------------------------------------------------


def load_job(connection: sqlite3.Connection, job_id: str) -> dict[str, Any] | None:
    found = connection.execute(
        f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs WHERE job_id = ?", (job_id,)
    ).fetchone()
    return None if found is None else job_row(found)


def job_row(values: Iterable[Any]) -> dict[str, Any]:
    """A ``jobs`` row (in ``JOB_COLUMNS`` order) as a dict, with ``options`` decoded (None
    when never recorded)."""
    row = dict(zip(JOB_COLUMNS, values, strict=True))
    try:
        options = json.loads(row["options"]) if isinstance(row["options"], str) else None
    except ValueError:
        options = None
    row["options"] = None if options is None else as_options(options)
    return row


def cleaned(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` as it is stored: every text made storable, URLs without any userinfo."""
    return {column: _cleaned(column, row.get(column)) for column in JOB_COLUMNS}


def save_jobs(connection: sqlite3.Connection, rows: Iterable[Mapping[str, Any]]) -> None:
    """Insert or replace jobs (``cleaned`` first)."""
    connection.executemany(
        f"INSERT OR REPLACE INTO jobs ({', '.join(JOB_COLUMNS)}) "
        f"VALUES ({', '.join('?' * len(JOB_COLUMNS))})",
        (_stored(row) for row in rows),
    )


def _stored(row: Mapping[str, Any]) -> list[object]:
    return [
        _options_json(row.get(column)) if column == "options" else _cleaned(column, row.get(column))
        for column in JOB_COLUMNS
    ]


def _options_json(options: object) -> str | None:
    if not isinstance(options, Mapping):
        return None
    return _options_text(tuple(sorted(options.items())))


@functools.lru_cache(maxsize=64)
def _options_text(items: tuple[tuple[str, bool | None], ...]) -> str:
    # A handful of distinct option sets cover every job: encode each once.
    return json.dumps(dict(items))


def add_events(
    connection: sqlite3.Connection, events: Iterable[tuple[str, str, str, str | None]]
) -> None:
    """Append (job_id, status, at, error_message) events."""
    connection.executemany(
        "INSERT INTO events (job_id, status, at, error_message) VALUES (?, ?, ?, ?)",
        (
            (clean_text(job_id), clean_text(status), at, _cleaned("error_message", message))
            for job_id, status, at, message in events
        ),
    )


def add_event(
    connection: sqlite3.Connection, job_id: str, status: str, at: str, error_message: str | None
) -> None:
    """Append one event to a job, dropping its oldest beyond ``MAX_EVENTS``."""
    add_events(connection, [(job_id, status, at, error_message)])
    connection.execute(
        "DELETE FROM events WHERE job_id = ?1 AND id <= "
        "(SELECT id FROM events WHERE job_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
        (clean_text(job_id), MAX_EVENTS),
    )


def load_events(
    connection: sqlite3.Connection, job_ids: list[str]
) -> dict[str, list[tuple[str, str, str | None]]]:
    """(status, at, error_message) of each job's events, oldest first."""
    events: dict[str, list[tuple[str, str, str | None]]] = {job_id: [] for job_id in job_ids}
    for start in range(0, len(job_ids), _CHUNK):
        chunk = job_ids[start : start + _CHUNK]
        for job_id, status, at, message in connection.execute(
            "SELECT job_id, status, at, error_message FROM events "
            f"WHERE job_id IN ({', '.join('?' * len(chunk))}) ORDER BY job_id, id",
            chunk,
        ):
            events[job_id].append((status, at, message))
    return events


def add_reuse(connection: sqlite3.Connection, job_id: str, at: str) -> None:
    connection.execute("INSERT INTO reuses (job_id, at) VALUES (?, ?)", (job_id, at))


# -- values ----------------------------------------------------------------------------------


def clean_text(text: str) -> str:
    """``text`` as SQLite (and UTF-8) can hold it: a lone surrogate, as a server's broken
    JSON can produce, becomes its ``\\udcxx`` escape instead of failing the write."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _cleaned(column: str, value: object) -> object:
    if not isinstance(value, str):
        return value
    value = clean_text(value)
    return strip_userinfo(value) if column in _URL_COLUMNS else value


def now() -> str:
    return format_time(datetime.now(timezone.utc))


def format_time(moment: datetime) -> str:
    """UTC with microseconds always written, so text order is time order (and SQL can sort)."""
    utc = moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return utc.isoformat(timespec="microseconds")


def normal_time(value: object) -> str | None:
    """A time as ``format_time`` writes it (most first-release times already are), or None."""
    if isinstance(value, str) and _NORMAL_TIME.fullmatch(value):
        return value
    parsed = parse_time(value)
    return None if parsed is None else format_time(parsed)


def parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def as_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def as_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def as_options(value: object) -> dict[str, bool | None]:
    if not isinstance(value, Mapping):
        return {}
    return {
        flag: value[flag] if isinstance(value.get(flag), bool) else None
        for flag in FLAGS
        if flag in value
    }
