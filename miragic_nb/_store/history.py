"""The durable record of jobs and results, so a credit spent is never a result lost.

A job's id is written the moment the create call returns; each result is saved (the server's
own bytes, with the prompt and parameters embedded in the file) before it is handed back.
Several kernels may share one data directory::

    <home>/history.sqlite3       jobs, their status changes and reuses (``miragic_nb._store.store``)
    <home>/images/<job>.jpg      the result as the server sent it, plus a JPEG COM segment
    <home>/images/<job>.png      ... or a PNG iTXt chunk, both holding {"miragic": {...}}

Image files are named by us from the job id (``miragic_nb._core.filenames``). The first release's
JSON records are moved into the database on first open (``miragic_nb._store.legacy``).

``<home>`` is the explicit ``home`` argument, else ``MIRAGIC_HOME``, else the platform's user
data directory. Nothing is created until the first write.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import platformdirs

from miragic_nb._core.embedded import (
    METADATA_KEY,
    embed_metadata,
    image_extension,
    jpeg_insert_comment,
    png_insert_itxt,
    read_embedded_metadata,
)
from miragic_nb._core.errors import (
    HistoryBusyError,
    HistoryCorruptError,
    HistoryError,
    HistoryTooNewError,
    InvalidRequestError,
)
from miragic_nb._core.filenames import is_plain_name, safe_stem
from miragic_nb._core.interrupts import start_without_ctrl_c
from miragic_nb._core.request import FLAGS, GenerationRequest
from miragic_nb._core.states import COMPLETED, FAILED, PENDING
from miragic_nb._core.urls import BUILTIN_EMULATOR
from miragic_nb._store import legacy, store

if TYPE_CHECKING:
    from miragic_nb._core.images import GeneratedImage

__all__ = [
    "METADATA_KEY",
    "History",
    "HistoryRecord",
    "StatusEvent",
    "UsageRow",
    "default_home",
    "embed_metadata",
    "history",
    "jpeg_insert_comment",
    "png_insert_itxt",
    "read_embedded_metadata",
    "reuse_key",
]

log = logging.getLogger("miragic_nb")

ENV_HOME = "MIRAGIC_HOME"
APP_NAME = "miragic-nb"


#: Writes this process could not make before it ended, replayed by the next open.
PENDING_WRITES = "pending-writes"
#: How long a read waits for this process's own pending writes to land.
READ_FLUSH_S = 2.0
#: How long the background writer waits for a busy store per try, and at most between tries.
WRITER_WAIT_S = 1.0
#: How long the end of the process waits for pending writes before leaving them to the
#: next open.
EXIT_FLUSH_S = 10.0

#: Columns that are ``HistoryRecord`` fields as they are.
_SAME_NAMED = [
    name
    for name in store.JOB_COLUMNS
    if name not in ("created_at", "updated_at", "options", "image", "image_width", "image_height")
]
_SELECT_JOBS = f"SELECT {', '.join(store.JOB_COLUMNS)} FROM jobs"
_NEWEST_FIRST = " ORDER BY created_at DESC, updated_at DESC, job_id DESC"


@dataclass(frozen=True)
class StatusEvent:
    """One status change of a job, as recorded."""

    status: str
    at: datetime
    error_message: str | None = None


@dataclass(frozen=True)
class HistoryRecord:
    """What is known about one job: the request, where it stands, and the saved image."""

    job_id: str
    status: str
    created_at: datetime
    updated_at: datetime
    prompt: str | None = None
    model: str | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    image_url: str | None = None
    options: dict[str, bool | None] = field(default_factory=dict)
    base_url: str | None = None
    #: The saved image file, or None until a result is saved.
    path: Path | None = None
    result_url: str | None = None
    error_message: str | None = None
    elapsed_s: float | None = None
    processing_s: float | None = None
    credits_used: float | None = None
    #: The server's own ``createdAt`` (``created_at`` is when this record was first written).
    server_created_at: str | None = None
    image_size: tuple[int, int] | None = None
    reuse_key: str | None = None
    events: tuple[StatusEvent, ...] = ()

    @property
    def emulator(self) -> bool:
        """Whether the built-in emulator made this job (a placeholder that cost nothing)."""
        return self.base_url == BUILTIN_EMULATOR

    def metadata(self, *, reused: bool = False) -> dict[str, Any]:
        """``GeneratedImage.metadata`` for this record, with the keys every result carries."""
        from miragic_nb._core.result_info import ResultInfo

        return ResultInfo(
            job_id=self.job_id,
            prompt=self.prompt,
            model=self.model,
            width=self.width,
            height=self.height,
            seed=self.seed,
            image_url=self.image_url,
            options=dict(self.options),
            result_url=self.result_url,
            elapsed_s=self.elapsed_s,
            processing_s=self.processing_s,
            credits_used=self.credits_used,
            created_at=self.server_created_at,
            base_url=self.base_url,
            image_size=self.image_size,
            path=None if self.path is None else str(self.path),
            reused=reused,
        ).as_dict()


@dataclass(frozen=True)
class UsageRow:
    """Spending in one group of ``History.usage``: a model, or a UTC day (``YYYY-MM-DD``)."""

    key: str | None
    jobs: int
    #: The sum of the server's ``creditsUsed`` over the group's results.
    credits: float
    failures: int
    #: Saved results returned instead of new jobs: each saved a credit.
    reuses: int
    #: The built-in emulator's jobs (placeholders): ``credits`` is 0 whatever it reported.
    emulator: bool = False


def default_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: ``home``, else ``MIRAGIC_HOME``, else the user data directory."""
    if home is not None and os.fspath(home).strip():
        chosen = Path(home)
    elif os.environ.get(ENV_HOME, "").strip():
        chosen = Path(os.environ[ENV_HOME].strip())
    else:
        chosen = Path(platformdirs.user_data_dir(APP_NAME))
    return chosen.expanduser().resolve()


def reuse_key(request: GenerationRequest, *, base_url: str | None) -> str:
    """A stable hash of everything that decides a result: server, model, size, prompt, seed,
    input image and every option. Equal keys mean the server was asked the same thing."""
    return _reuse_key({**request.describe(), "base_url": _clean_base_url(base_url)})


class History:
    """The job and result records under one data directory; safe to share between kernels."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self._home = default_home(home)
        self._database = store.Database(self._home)

    @property
    def home(self) -> Path:
        return self._home

    def __repr__(self) -> str:
        return f"History(home={str(self._home)!r})"

    # -- writing ---------------------------------------------------------------------------
    #
    # Each write is a ``PendingWrite`` (what to change, as plain data) applied in one
    # transaction. ``record_*`` apply it now; ``record`` (the engine's way) applies it within
    # a bound, or hands it to this home's background writer, which retries until the store
    # takes it and, at exit, leaves what it could not write in ``pending-writes/`` for the
    # next open to replay. So a locked, full or read-only store never stops a result.

    def record_created(
        self,
        job_id: str,
        request: GenerationRequest,
        *,
        base_url: str,
        identity: str | None = None,
    ) -> HistoryRecord:
        """Record a job the moment the create call returns, before any waiting.

        ``identity`` names the server for reuse when its URL is not stable (the built-in
        emulator listens on a new port in every process); default: ``base_url``. The record
        keeps that name as its ``base_url`` too: a port that died with its process says
        nothing later, the name says the job was a placeholder that cost no credit.
        """
        return self._apply(self.created(job_id, request, base_url=base_url, identity=identity))

    def record_result(self, image: GeneratedImage) -> HistoryRecord:
        """Save a completed result (image file, then record).

        Uses ``image.metadata["job_id"]``; sets ``image.info["miragic"]["path"]``.
        """
        return self._apply(self.result(image))

    def record_status(
        self, job_id: str, status: str, *, error_message: str | None = None
    ) -> HistoryRecord:
        """Record a failure, timeout, cancellation (or any other status) of a job."""
        return self._apply(self.status(job_id, status, error_message=error_message))

    def created(
        self,
        job_id: str,
        request: GenerationRequest,
        *,
        base_url: str,
        identity: str | None = None,
    ) -> PendingWrite:
        """The write that records a created job (``PENDING``); ``identity`` as in
        ``record_created``."""
        fields = {
            **request.describe(),
            "base_url": _clean_base_url(identity or base_url),
            "reuse_key": reuse_key(request, base_url=identity or base_url),
        }
        return PendingWrite(_check_job_id(job_id), "created", fields)

    def result(self, image: GeneratedImage) -> PendingWrite:
        """The write that saves a completed result: its file, then its record."""
        meta = image.metadata
        job_id = meta.get("job_id")
        if not isinstance(job_id, str) or not job_id.strip():
            raise InvalidRequestError(
                "the image's metadata has no job_id; it cannot be recorded", field="job_id"
            )
        fields = {
            "request": _metadata_request_fields(meta),
            "result": _metadata_result_fields(meta),
            "size": list(image.size) if image.size else None,
        }
        return PendingWrite(_check_job_id(job_id), "result", fields, image=image)

    def status(self, job_id: str, status: str, *, error_message: str | None = None) -> PendingWrite:
        """The write that records how a job ended (or any other status)."""
        if not isinstance(status, str) or not status.strip():
            raise InvalidRequestError(
                f"status must be a non-empty string, got {status!r}", field="status"
            )
        fields = {"status": status.strip().upper(), "error_message": error_message}
        return PendingWrite(_check_job_id(job_id), "status", fields)

    def record(self, write: PendingWrite, *, wait: float = 0.0) -> None:
        """Apply ``write`` if the store takes it within ``wait`` seconds, else hand it to the
        background writer (said in one warning line when the store refuses it, not when it
        is only busy). Never raises for a store problem."""
        writer = _writer(self._home)
        if wait > 0 and not writer.busy():
            try:
                self._apply(write, wait=wait)
                return
            except (HistoryError, OSError) as exc:
                writer.note(write, exc)
        writer.put(write)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait up to ``timeout`` for this process's pending writes to this home; True when
        none is left."""
        return _writer(self._home).flush(timeout)

    # -- reading ---------------------------------------------------------------------------

    def records(
        self,
        limit: int | None = None,
        *,
        search: str | None = None,
        model: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
    ) -> list[HistoryRecord]:
        """The records, newest first: at most ``limit``, with ``search`` in the prompt (any
        case), of ``model``, with ``status``, created at or after ``since``."""
        where, parameters = _filters(search=search, model=model, status=status, since=since)
        query = _SELECT_JOBS + where + _NEWEST_FIRST
        if limit is not None:
            query += " LIMIT ?"
            parameters.append(max(limit, 0))
        with self._reading() as connection:
            if connection is None:
                return []
            rows = connection.execute(query, parameters).fetchall()
            return self._records(connection, rows)

    def get(self, job_id: str) -> HistoryRecord | None:
        """The record of one job, or None."""
        job_id = _check_job_id(job_id)
        with self._reading() as connection:
            if connection is None:
                return None
            rows = connection.execute(_SELECT_JOBS + " WHERE job_id = ?", (job_id,)).fetchall()
            found = self._records(connection, rows)
        return found[0] if found else None

    def reuse(
        self, request: GenerationRequest, *, base_url: str, wait: float | None = None
    ) -> GeneratedImage | None:
        """The newest saved result of exactly this request (marked reused), or None.

        Only seeded requests qualify: without a seed the server is asked for a new picture.
        A result whose image file is gone or unreadable is skipped. ``wait`` bounds how long
        a busy store is waited for (``HistoryBusyError`` past it).
        """
        if request.seed is None:
            return None
        query = _SELECT_JOBS + " WHERE reuse_key = ? AND status = ?" + _NEWEST_FIRST
        with self._reading(wait=wait) as connection:
            if connection is None:
                return None
            rows = connection.execute(query, (reuse_key(request, base_url=base_url), COMPLETED))
            candidates = self._records(connection, rows.fetchall())
        # Decoded outside the transaction: other threads need not wait for Pillow.
        loaded = (_load(record) for record in candidates)
        image = next((image for image in loaded if image is not None), None)
        if image is None:
            return None
        try:
            with self._database.writing(wait=wait) as connection:
                store.add_reuse(connection, image.metadata["job_id"], store.now())
        except HistoryError as exc:  # the result is good; only the usage count misses it
            log.warning("could not count a reuse in the history: %s", exc)
        return image

    def usage(
        self, since: datetime | None = None, *, by: Literal["model", "day"] = "model"
    ) -> list[UsageRow]:
        """Credits spent, jobs, failures and reuses per model or per UTC day, since ``since``.

        The built-in emulator's jobs are rows of their own (``emulator`` True) with 0 credits.
        """
        if by not in ("model", "day"):
            raise InvalidRequestError(f"by must be 'model' or 'day', got {by!r}", field="by")
        group = "model" if by == "model" else "substr(created_at, 1, 10)"
        reuse_group = "jobs.model" if by == "model" else "substr(reuses.at, 1, 10)"
        start = store.format_time(since) if since is not None else ""
        with self._reading() as connection:
            if connection is None:
                return []
            totals = connection.execute(
                f"SELECT {group}, base_url IS ?, COUNT(*), TOTAL(credits_used), SUM(status = ?) "
                f"FROM jobs WHERE created_at >= ? GROUP BY {group}, base_url IS ?",
                (BUILTIN_EMULATOR, FAILED, start, BUILTIN_EMULATOR),
            ).fetchall()
            reuses = connection.execute(
                f"SELECT {reuse_group}, jobs.base_url IS ?, COUNT(*) FROM reuses "
                f"JOIN jobs USING (job_id) WHERE reuses.at >= ? "
                f"GROUP BY {reuse_group}, jobs.base_url IS ?",
                (BUILTIN_EMULATOR, start, BUILTIN_EMULATOR),
            ).fetchall()
        rows: dict[tuple[bool, str | None], UsageRow] = {}
        for key, emulator, jobs, credits, failures in totals:
            # The emulator reports a credit per job, but nothing was paid for its placeholders.
            spent = 0.0 if emulator else credits
            rows[bool(emulator), key] = UsageRow(key, jobs, spent, failures, 0, bool(emulator))
        for key, emulator, count in reuses:
            row = rows.get((bool(emulator), key), UsageRow(key, 0, 0.0, 0, 0, bool(emulator)))
            rows[bool(emulator), key] = replace(row, reuses=count)
        return sorted(rows.values(), key=lambda row: (row.emulator, row.key is None, row.key or ""))

    # -- plumbing --------------------------------------------------------------------------

    @contextmanager
    def _reading(self, *, wait: float | None = None) -> Iterator[sqlite3.Connection | None]:
        """A connection to read from, or None when there is no history yet (nothing is
        created just to read). This process's own pending writes land first (briefly
        waited for), so a result just handed over reads back as saved."""
        _writer(self._home).flush(READ_FLUSH_S if wait is None else min(wait, READ_FLUSH_S))
        self._migrate()
        if not self._database.exists():
            yield None
            return
        with self._database.reading(wait=wait) as connection:
            yield connection

    def _migrate(self, *, wait: float | None = None) -> None:
        if legacy.pending(self._home):
            with self._database.writing(wait=wait) as connection:
                imported = legacy.import_records(connection, self._home)
            legacy.move_aside(self._home, imported)
        spool = self._home / PENDING_WRITES
        if spool.is_dir():
            self._replay(spool, wait=wait)

    def _replay(self, spool: Path, *, wait: float | None) -> None:
        """Write what an earlier process could not (reconciling its records), oldest first."""
        for path in sorted(spool.glob("*.json")):
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
                write = PendingWrite(str(saved["job_id"]), str(saved["kind"]), saved["fields"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("skipped an unreadable pending history write %s: %s", path, exc)
                continue
            self._update(write.job_id, _change(write), wait=wait, migrate=False)
            path.unlink(missing_ok=True)

    def _apply(self, write: PendingWrite, *, wait: float | None = None) -> HistoryRecord:
        """Apply one write now (a result's file first, outside any transaction)."""
        if write.image is not None:
            self._save_image(write, wait=wait)
        saved = self._update(write.job_id, _change(write), wait=wait)
        image = write.saved_image
        if image is not None and saved.path is not None:
            if not isinstance(image.info.get(METADATA_KEY), dict):
                image.info[METADATA_KEY] = {}
            image.info[METADATA_KEY]["path"] = str(saved.path)
        return saved

    def _save_image(self, write: PendingWrite, *, wait: float | None) -> None:
        """Write a result's file (the server's bytes with how it was made embedded) before
        any record names it; on a full or read-only disk the record says it was not saved."""
        image = write.image
        assert image is not None
        data = bytes(image.original_bytes)
        name = f"{safe_stem(write.job_id)}.{image_extension(data, image.format)}"
        # What record_created saw (the request as sent) wins over the image's metadata.
        row: dict[str, Any] = {"job_id": write.job_id}
        try:
            if self._database.exists():
                with self._database.reading(wait=wait) as connection:
                    row = store.load_job(connection, write.job_id) or row
        except HistoryError:
            pass  # a busy store: the metadata alone says how the image was made
        for key, value in write.fields["request"].items():
            if row.get(key) is None:
                row[key] = value
        # Embedded outside every transaction: nobody waits for the store meanwhile.
        embedded = _embedded(store.cleaned(row))
        try:
            _write_file(self._home / "images" / name, embed_metadata(data, embedded))
        except OSError as exc:
            write.fields["image"] = None
            write.fields["error_message"] = f"the image could not be saved: {exc}"
            log.warning(
                "job %s completed but its image could not be saved in %s: %s",
                write.job_id,
                self._home,
                exc,
            )
        else:
            write.fields["image"] = name
            write.fields["error_message"] = None
        write.saved_image = image
        write.image = None

    def _update(
        self,
        job_id: str,
        change: Callable[[dict[str, Any]], tuple[str, str | None]],
        *,
        wait: float | None = None,
        migrate: bool = True,
    ) -> HistoryRecord:
        """Read-merge-write one job in one transaction, so concurrent updates all land."""
        job_id = _check_job_id(job_id)
        if migrate:
            self._migrate(wait=wait)
        with self._database.writing(wait=wait) as connection:
            now = store.now()
            row = store.load_job(connection, job_id) or {"job_id": job_id, "created_at": now}
            status, message = change(row)
            row["updated_at"] = now
            store.save_jobs(connection, [row])
            store.add_event(connection, job_id, status, now, message)
            saved = self._records(
                connection, connection.execute(_SELECT_JOBS + " WHERE job_id = ?", (job_id,))
            )
        return saved[0]

    def _records(self, connection: sqlite3.Connection, rows: Iterable[Any]) -> list[HistoryRecord]:
        parsed = [store.job_row(values) for values in rows]
        events = store.load_events(connection, [row["job_id"] for row in parsed])
        return [_record(row, events[row["job_id"]], self._home) for row in parsed]


@dataclass
class PendingWrite:
    """One change to one job's record, as plain data (so it can wait in a queue or a file).

    ``kind`` is ``created``, ``result`` or ``status``; a result carries its ``image`` until its
    file is written (then ``fields["image"]`` names the file, or None if it could not be).
    """

    job_id: str
    kind: str
    fields: dict[str, Any]
    image: GeneratedImage | None = None
    saved_image: GeneratedImage | None = None

    def saved_form(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "kind": self.kind, "fields": self.fields}


def _change(write: PendingWrite) -> Callable[[dict[str, Any]], tuple[str, str | None]]:
    """How ``write`` changes a job's row, inside its transaction."""
    fields = write.fields

    def created(row: dict[str, Any]) -> tuple[str, str | None]:
        row.update(fields)
        # Another kernel may already have finished (or given up on) this job: never demote.
        if not row.get("status"):
            row["status"] = PENDING
        return PENDING, None

    def result(row: dict[str, Any]) -> tuple[str, str | None]:
        # What record_created saw is the request as sent; the image's metadata fills gaps
        # (e.g. a job resumed by id in another kernel).
        for key, value in fields["request"].items():
            if row.get(key) is None:
                row[key] = value
        if not row.get("reuse_key"):  # record_created's key is the request's own
            row["reuse_key"] = _reuse_key(row)
        row.update(fields["result"])
        message = fields.get("error_message")
        # The file was written before this transaction: the record never names an image
        # not yet saved (None when it could not be saved).
        row.update(status=COMPLETED, error_message=message, image=fields.get("image"))
        if fields.get("size"):
            row["image_width"], row["image_height"] = fields["size"]
        return COMPLETED, message

    def status(row: dict[str, Any]) -> tuple[str, str | None]:
        status, message = fields["status"], fields.get("error_message")
        if row.get("status") == COMPLETED and status != COMPLETED:
            # A late timeout from another kernel must not hide a saved result.
            log.debug("job %s is completed; keeping that over %s", write.job_id, status)
        else:
            row.update(status=status, error_message=message)
        return status, message

    return {"created": created, "result": result, "status": status}[write.kind]


class _Writer:
    """This process's writes to one home that the store did not take at once, in order.

    A daemon thread applies them, retrying while the store is busy, full or read-only (a
    problem other than busy is said once per job, in one warning line). At exit it waits
    ``EXIT_FLUSH_S``, then leaves what is left in ``pending-writes/`` for the next open.
    """

    def __init__(self, home: Path) -> None:
        self.home = home
        self._history = History(home)
        self._queue: deque[PendingWrite] = deque()
        self._cond = threading.Condition()
        self._working = False
        self._stopping = False
        self._pid = os.getpid()
        self._warned: set[str] = set()
        self._thread: threading.Thread | None = None
        atexit.register(self._at_exit)

    def busy(self) -> bool:
        with self._cond:
            return bool(self._queue) or self._working

    def put(self, write: PendingWrite) -> None:
        with self._cond:
            self._queue.append(write)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="miragic-history", daemon=True
                )
                start_without_ctrl_c(self._thread)
            self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        if threading.current_thread() is self._thread:
            return False  # the writer itself reading: never wait for itself
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._working:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def note(self, write: PendingWrite, exc: BaseException) -> None:
        """Say once per job, in one line, that its record could not be written yet."""
        if isinstance(exc, HistoryBusyError) or write.job_id in self._warned:
            return  # busy is the ordinary case: written as soon as the store is free
        self._warned.add(write.job_id)
        later = (
            "it is not kept (the database is left as it is)"
            if _permanent(exc)
            else "it is written when the store can take it"
        )
        log.warning(
            "could not write the job history in %s for job %s (%s); the result is yours, and %s",
            self.home,
            write.job_id,
            _one_line(exc),
            later,
        )

    def _run(self) -> None:
        pause = 0.05
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return  # the process is ending: what is left is spooled by _at_exit
                write = self._queue[0]
                self._working = True
            try:
                self._history._apply(write, wait=WRITER_WAIT_S)
            except Exception as exc:
                self.note(write, exc)
                with self._cond:
                    if _permanent(exc):
                        self._queue.popleft()  # a damaged or newer database: never retried
                    self._working = False
                    self._cond.notify_all()
                    # A pause, cut short when the process ends.
                    self._cond.wait_for(lambda: self._stopping, timeout=pause)
                pause = min(pause * 2, WRITER_WAIT_S)
                continue
            pause = 0.05
            with self._cond:
                self._queue.popleft()
                self._working = False
                self._cond.notify_all()

    def _at_exit(self) -> None:
        if os.getpid() != self._pid or self.flush(EXIT_FLUSH_S):
            return  # a forked child does not write its parent's queue
        # Stop the thread between attempts (one inside SQLite as the interpreter is torn
        # down can crash it), then keep what is left for the next open.
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(WRITER_WAIT_S + 5)
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
        spool = self.home / PENDING_WRITES
        told: set[str] = set()
        for number, write in enumerate(left):
            try:
                if write.image is not None:
                    self._history._save_image(write, wait=0.0)
                spool.mkdir(mode=0o700, parents=True, exist_ok=True)
                name = f"{time.time_ns():020d}-{number:04d}-{safe_stem(write.job_id)}.json"
                text = json.dumps(write.saved_form(), default=str, ensure_ascii=False)
                _write_file(spool / name, text.encode("utf-8", "backslashreplace"))
                if write.job_id in told:
                    continue
                told.add(write.job_id)
                log.warning(
                    "the history in %s could not take job %s's record before the end; it "
                    "waits in %s/ and is written the next time the history is opened",
                    self.home,
                    write.job_id,
                    PENDING_WRITES,
                )
            except OSError as exc:
                if write.job_id in told:
                    continue
                told.add(write.job_id)
                log.warning(
                    "job %s could not be recorded in the history in %s (%s); resume it by "
                    "id to record it",
                    write.job_id,
                    self.home,
                    _one_line(exc),
                )


_WRITERS: dict[tuple[int, Path], _Writer] = {}
_WRITERS_LOCK = threading.Lock()


def _writer(home: Path) -> _Writer:
    """The background writer of ``home`` in this process (a forked child gets its own)."""
    key = (os.getpid(), home)
    with _WRITERS_LOCK:
        writer = _WRITERS.get(key)
        if writer is None:
            writer = _WRITERS[key] = _Writer(home)
        return writer


def _permanent(exc: BaseException) -> bool:
    """A store problem no retry fixes: not a database, a newer schema, a bad record."""
    return isinstance(exc, (HistoryCorruptError, HistoryTooNewError, InvalidRequestError)) or (
        not isinstance(exc, (HistoryError, OSError))
    )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def history(
    home: str | os.PathLike[str] | None = None, *, limit: int | None = None
) -> list[HistoryRecord]:
    """The recorded jobs, newest first (``miragic_nb.history()``).

    The readers are attributes too, so ``miragic_nb.history.read_embedded_metadata`` works
    although the package's ``history`` is this function, not the module.
    """
    return History(home).records(limit)


_READERS: dict[str, object] = {
    "History": History,
    "HistoryRecord": HistoryRecord,
    "StatusEvent": StatusEvent,
    "UsageRow": UsageRow,
    "default_home": default_home,
    "reuse_key": reuse_key,
    "read_embedded_metadata": read_embedded_metadata,
    "embed_metadata": embed_metadata,
}
for _name, _reader in _READERS.items():
    setattr(history, _name, _reader)


# -- records ---------------------------------------------------------------------------------


def _check_job_id(job_id: object) -> str:
    if not isinstance(job_id, str) or not job_id.strip():
        raise InvalidRequestError(
            f"job_id must be a non-empty string, got {job_id!r}", field="job_id"
        )
    return store.clean_text(job_id.strip())


def _record(
    row: Mapping[str, Any], events: list[tuple[str, str, str | None]], home: Path
) -> HistoryRecord:
    created = store.parse_time(row["created_at"])
    assert created is not None  # written by store.format_time
    image = row["image"]
    width, height = row["image_width"], row["image_height"]
    return HistoryRecord(
        **{name: row[name] for name in _SAME_NAMED},
        created_at=created,
        updated_at=store.parse_time(row["updated_at"]) or created,
        options=row["options"] or {},
        path=home / "images" / image if isinstance(image, str) and is_plain_name(image) else None,
        image_size=(width, height) if width is not None and height is not None else None,
        events=tuple(
            StatusEvent(status, at, message)
            for status, text, message in events
            if (at := store.parse_time(text)) is not None
        ),
    )


def _filters(
    *, search: str | None, model: str | None, status: str | None, since: datetime | None
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    parameters: list[Any] = []
    if search:
        escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        clauses.append("prompt LIKE ? ESCAPE '\\'")
        parameters.append(f"%{store.clean_text(escaped)}%")
    if model:
        clauses.append("model = ?")
        parameters.append(store.clean_text(model))
    if status:
        clauses.append("status = ?")
        parameters.append(store.clean_text(status.strip().upper()))
    if since is not None:
        clauses.append("created_at >= ?")
        parameters.append(store.format_time(since))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), parameters


def _load(record: HistoryRecord) -> GeneratedImage | None:
    """The saved image of a record as a reused ``GeneratedImage``; None if it cannot be read."""
    # Pillow loads here, not at import: ``miragic_nb._store.history`` stays cheap to import.
    from miragic_nb._core.errors import DownloadError
    from miragic_nb._core.images import GeneratedImage

    if record.path is None:
        return None
    try:
        data = record.path.read_bytes()
        if image_extension(data[:16], None) != record.path.suffix.lstrip("."):
            return None  # not the format it was saved as: replaced by something else
        return GeneratedImage.from_bytes(data, record.metadata(reused=True))
    except (OSError, DownloadError) as exc:
        log.warning("cannot load the saved image of job %s: %s", record.job_id, exc)
        return None


def _write_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` all at once, synced, so a committed record never names
    a half-written image; a temp file left by a crash starts with "." and is never read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


# -- request fields and the reuse key -------------------------------------------------------


def _clean_base_url(base_url: str | None) -> str | None:
    return base_url.strip().rstrip("/") if isinstance(base_url, str) else None


def _metadata_request_fields(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The request part of a result's metadata, by allow-list (nothing else is persisted)."""
    return {
        "prompt": store.as_str(meta.get("prompt")),
        "model": store.as_str(meta.get("model")),
        "width": store.as_int(meta.get("width")),
        "height": store.as_int(meta.get("height")),
        "seed": store.as_int(meta.get("seed")),
        "image_url": store.as_str(meta.get("image_url")),
        "options": store.as_options(meta.get("options")) if "options" in meta else None,
        "base_url": _clean_base_url(store.as_str(meta.get("base_url"))),
    }


def _metadata_result_fields(meta: Mapping[str, Any]) -> dict[str, Any]:
    fields = {
        "result_url": store.as_str(meta.get("result_url")),
        "elapsed_s": store.as_float(meta.get("elapsed_s")),
        "processing_s": store.as_float(meta.get("processing_s")),
        "credits_used": store.as_float(meta.get("credits_used")),
        "server_created_at": store.as_str(meta.get("created_at")),
    }
    return {key: value for key, value in fields.items() if value is not None}


def _reuse_key(fields: Mapping[str, Any]) -> str:
    # Canonical JSON (sorted keys, no spaces) so the same request hashes the same everywhere;
    # "v" changes if the key's meaning ever does, so old records simply stop matching.
    options = store.as_options(fields.get("options"))
    canonical = json.dumps(
        {
            "v": 1,
            **{
                key: fields.get(key)
                for key in ("base_url", "model", "width", "height", "prompt", "seed", "image_url")
            },
            "options": {flag: options.get(flag) for flag in FLAGS},
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    # surrogatepass: a prompt with a lone surrogate still gets a key (valid text is unchanged).
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def _embedded(row: Mapping[str, Any]) -> dict[str, Any]:
    """How the image was made, for the file itself. No result URL: it is signed and temporary."""
    keys = ("job_id", "prompt", "model", "width", "height", "seed", "image_url", "options")
    meta = {key: row.get(key) for key in keys}
    meta["base_url"] = row.get("base_url")
    meta["generator"] = APP_NAME
    return meta
