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

import hashlib
import json
import logging
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
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
from miragic_nb._core.errors import HistoryError, InvalidRequestError
from miragic_nb._core.filenames import is_plain_name, safe_stem
from miragic_nb._core.request import FLAGS, GenerationRequest
from miragic_nb._core.states import COMPLETED, FAILED, PENDING
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
        emulator listens on a new port in every process); default: ``base_url``.
        """
        fields = {
            **request.describe(),
            "base_url": _clean_base_url(base_url),
            "reuse_key": reuse_key(request, base_url=identity or base_url),
        }

        def update(row: dict[str, Any]) -> tuple[str, str | None]:
            row.update(fields)
            # Another kernel may already have finished (or given up on) this job: never demote.
            if not row.get("status"):
                row["status"] = PENDING
            return PENDING, None

        return self._update(job_id, update)

    def record_result(self, image: GeneratedImage) -> HistoryRecord:
        """Save a completed result (image file, then record) before it is returned.

        Uses ``image.metadata["job_id"]``; sets ``image.info["miragic"]["path"]``.
        """
        meta = image.metadata
        job_id = meta.get("job_id")
        if not isinstance(job_id, str) or not job_id.strip():
            raise InvalidRequestError(
                "the image's metadata has no job_id; it cannot be recorded", field="job_id"
            )
        data = bytes(image.original_bytes)
        name = f"{safe_stem(job_id.strip())}.{image_extension(data, image.format)}"

        def update(row: dict[str, Any]) -> tuple[str, str | None]:
            # What record_created saw is the request as sent; the image's metadata fills gaps
            # (e.g. a job resumed by id in another kernel).
            for key, value in _metadata_request_fields(meta).items():
                if row.get(key) is None:
                    row[key] = value
            if not row.get("reuse_key"):  # record_created's key is the request's own
                row["reuse_key"] = _reuse_key(row)
            row.update(_metadata_result_fields(meta))
            row.update(status=COMPLETED, error_message=None, image=name)
            if image.size:
                row["image_width"], row["image_height"] = image.size
            # Written inside the transaction: the record never names an image not yet saved.
            embedded = _embedded(store.cleaned(row))
            _write_file(self._home / "images" / name, embed_metadata(data, embedded))
            return COMPLETED, None

        saved = self._update(job_id, update)
        if not isinstance(image.info.get(METADATA_KEY), dict):
            image.info[METADATA_KEY] = {}
        image.info[METADATA_KEY]["path"] = str(saved.path)
        return saved

    def record_status(
        self, job_id: str, status: str, *, error_message: str | None = None
    ) -> HistoryRecord:
        """Record a failure, timeout, cancellation (or any other status) of a job."""
        if not isinstance(status, str) or not status.strip():
            raise InvalidRequestError(
                f"status must be a non-empty string, got {status!r}", field="status"
            )
        status = status.strip().upper()

        def update(row: dict[str, Any]) -> tuple[str, str | None]:
            if row.get("status") == COMPLETED and status != COMPLETED:
                # A late timeout from another kernel must not hide a saved result.
                log.debug("job %s is completed; keeping that over %s", job_id, status)
            else:
                row.update(status=status, error_message=error_message)
            return status, error_message

        return self._update(job_id, update)

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

    def reuse(self, request: GenerationRequest, *, base_url: str) -> GeneratedImage | None:
        """The newest saved result of exactly this request (marked reused), or None.

        Only seeded requests qualify: without a seed the server is asked for a new picture.
        A result whose image file is gone or unreadable is skipped.
        """
        if request.seed is None:
            return None
        query = _SELECT_JOBS + " WHERE reuse_key = ? AND status = ?" + _NEWEST_FIRST
        with self._reading() as connection:
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
            with self._database.writing() as connection:
                store.add_reuse(connection, image.metadata["job_id"], store.now())
        except HistoryError as exc:  # the result is good; only the usage count misses it
            log.warning("could not count a reuse in the history: %s", exc)
        return image

    def usage(
        self, since: datetime | None = None, *, by: Literal["model", "day"] = "model"
    ) -> list[UsageRow]:
        """Credits spent, jobs, failures and reuses per model or per UTC day, since ``since``."""
        if by not in ("model", "day"):
            raise InvalidRequestError(f"by must be 'model' or 'day', got {by!r}", field="by")
        group = "model" if by == "model" else "substr(created_at, 1, 10)"
        reuse_group = "jobs.model" if by == "model" else "substr(reuses.at, 1, 10)"
        start = store.format_time(since) if since is not None else ""
        with self._reading() as connection:
            if connection is None:
                return []
            totals = connection.execute(
                f"SELECT {group}, COUNT(*), TOTAL(credits_used), SUM(status = ?) FROM jobs "
                f"WHERE created_at >= ? GROUP BY {group}",
                (FAILED, start),
            ).fetchall()
            reuses = dict(
                connection.execute(
                    f"SELECT {reuse_group}, COUNT(*) FROM reuses JOIN jobs USING (job_id) "
                    f"WHERE reuses.at >= ? GROUP BY {reuse_group}",
                    (start,),
                ).fetchall()
            )
        rows = {
            key: UsageRow(key, jobs, credits, failures, 0)
            for key, jobs, credits, failures in totals
        }
        for key, count in reuses.items():
            row = rows.get(key, UsageRow(key, 0, 0.0, 0, 0))
            rows[key] = UsageRow(row.key, row.jobs, row.credits, row.failures, count)
        return sorted(rows.values(), key=lambda row: (row.key is None, row.key or ""))

    # -- plumbing --------------------------------------------------------------------------

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection | None]:
        """A connection to read from, or None when there is no history yet (nothing is
        created just to read)."""
        self._migrate()
        if not self._database.exists():
            yield None
            return
        with self._database.reading() as connection:
            yield connection

    def _migrate(self) -> None:
        if legacy.pending(self._home):
            with self._database.writing() as connection:
                imported = legacy.import_records(connection, self._home)
            legacy.move_aside(self._home, imported)

    def _update(
        self, job_id: str, change: Callable[[dict[str, Any]], tuple[str, str | None]]
    ) -> HistoryRecord:
        """Read-merge-write one job in one transaction, so concurrent updates all land."""
        job_id = _check_job_id(job_id)
        self._migrate()
        with self._database.writing() as connection:
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
