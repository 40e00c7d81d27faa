"""The durable record of jobs and results, so a credit spent is never a result lost.

A job's id is written the moment the create call returns; each result is saved (the server's
own bytes, with the prompt and parameters embedded in the file) before it is handed back.
Several kernels may share one data directory, so there is no shared index file::

    <home>/jobs/<job>.json       one record per job; replaced atomically, merged under a lock
    <home>/images/<job>.jpg      the result as the server sent it, plus a JPEG COM segment
    <home>/images/<job>.png      ... or a PNG iTXt chunk, both holding {"miragic": {...}}
    <home>/locks/<job>.lock      advisory locks that serialise updates of one job

``<home>`` is the explicit ``home`` argument, else ``MIRAGIC_HOME``, else the platform's user
data directory. Nothing is created until the first write.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs

from .request import FLAGS, GenerationRequest

if TYPE_CHECKING:
    from .images import GeneratedImage

if sys.platform == "win32":
    import msvcrt
else:
    import fcntl

log = logging.getLogger("miragic_nb")

ENV_HOME = "MIRAGIC_HOME"
APP_NAME = "miragic-nb"

PENDING = "PENDING"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
#: We stopped waiting; the job may still finish on the server (and be resumed).
TIMEOUT = "TIMEOUT"
#: The user stopped the wait (kernel interrupt, Cancel button).
CANCELLED = "CANCELLED"
#: Anything else that ended the wait: a download or decoding failure, a connection error.
ERROR = "ERROR"

#: Marks a file as ours; anything else in ``jobs/`` is skipped.
_FORMAT = "miragic-nb.history"
_VERSION = 1
#: Key of the embedded image metadata (PNG iTXt keyword; top-level key of the JPEG comment).
METADATA_KEY = "miragic"
#: Status changes kept per record; older ones are dropped so a record stays small.
MAX_EVENTS = 100
_JPEG_MAX_SEGMENT = 65533  # a segment's 16-bit length counts itself
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp"}
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")

# (path, mtime_ns, size) of unreadable files already reported, so a notebook that lists the
# history on every run does not repeat the same warning.
_warned: set[tuple[str, int, int]] = set()


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

    def metadata(self) -> dict[str, Any]:
        """``GeneratedImage.metadata`` for this record, with the keys the client uses."""
        meta: dict[str, Any] = {
            "job_id": self.job_id,
            "prompt": self.prompt,
            "model": self.model,
            "width": self.width,
            "height": self.height,
            "seed": self.seed,
            "image_url": self.image_url,
            "options": dict(self.options),
            "result_url": self.result_url,
            "elapsed_s": self.elapsed_s,
            "processing_s": self.processing_s,
            "credits_used": self.credits_used,
            "created_at": self.server_created_at,
            "base_url": self.base_url,
        }
        if self.image_size is not None:
            meta["image_size"] = list(self.image_size)
        if self.path is not None:
            meta["path"] = str(self.path)
        return meta


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
    return _reuse_key(
        {
            "base_url": _clean_base_url(base_url),
            "model": request.model,
            "width": request.width,
            "height": request.height,
            "prompt": request.prompt,
            "seed": request.seed,
            "image_url": request.image_url,
            "options": {flag: getattr(request, flag) for flag in FLAGS},
        }
    )


class History:
    """The job and result records under one data directory; safe to share between kernels."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self._home = default_home(home)

    @property
    def home(self) -> Path:
        return self._home

    def __repr__(self) -> str:
        return f"History(home={str(self._home)!r})"

    # -- writing ---------------------------------------------------------------------------

    def record_created(
        self, job_id: str, request: GenerationRequest, *, base_url: str
    ) -> HistoryRecord:
        """Record a job the moment the create call returns, before any waiting."""

        def update(data: dict[str, Any]) -> None:
            data.update(_request_fields(request, base_url))
            data["reuse_key"] = reuse_key(request, base_url=base_url)
            # Another kernel may already have finished (or given up on) this job: never demote.
            if not data.get("status"):
                data["status"] = PENDING
            _add_event(data, PENDING, None)

        return self._update(job_id, update)

    def record_result(self, image: GeneratedImage) -> HistoryRecord:
        """Save a completed result (image file, then record) before it is returned.

        Uses ``image.metadata["job_id"]``; sets ``image.info["miragic"]["path"]``.
        """
        meta = image.metadata
        job_id = meta.get("job_id")
        if not isinstance(job_id, str) or not job_id.strip():
            raise ValueError("the image's metadata has no job_id; it cannot be recorded")
        data = bytes(image.original_bytes)
        name = _file_name(job_id.strip())
        extension = _extension(data, image.format)
        relative = f"images/{name}.{extension}"

        def update(record: dict[str, Any]) -> None:
            # What record_created saw is the request as sent; the image's metadata fills gaps
            # (e.g. a job resumed by id in another kernel).
            for key, value in _metadata_request_fields(meta).items():
                if record.get(key) is None:
                    record[key] = value
            record.update(_metadata_result_fields(meta))
            record["reuse_key"] = _reuse_key_of(record)
            record["status"] = COMPLETED
            record["error_message"] = None
            record["image"] = relative
            if image.size:
                record["image_size"] = list(image.size)
            self._write_file(self._home / relative, _embed(data, _embedded_metadata(record)))
            _add_event(record, COMPLETED, None)

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
            raise ValueError(f"status must be a non-empty string, got {status!r}")
        status = status.strip().upper()

        def update(data: dict[str, Any]) -> None:
            _add_event(data, status, error_message)
            if data.get("status") == COMPLETED and status != COMPLETED:
                # A late timeout from another kernel must not hide a saved result.
                log.debug("job %s is completed; keeping that over %s", job_id, status)
                return
            data["status"] = status
            data["error_message"] = error_message

        return self._update(job_id, update)

    # -- reading ---------------------------------------------------------------------------

    def records(self, limit: int | None = None) -> list[HistoryRecord]:
        """All readable records, newest first; unreadable files are skipped with a warning."""
        folder = self._home / "jobs"
        if not folder.is_dir():
            return []
        found = [record for path in folder.glob("*.json") if (record := _read(path)) is not None]
        found.sort(key=lambda r: (r.created_at, r.updated_at, r.job_id), reverse=True)
        return found if limit is None else found[: max(limit, 0)]

    def get(self, job_id: str) -> HistoryRecord | None:
        """The record of one job, or None."""
        path = self._record_path(job_id)
        return _read(path) if path.is_file() else None

    def find_reusable(self, request: GenerationRequest, *, base_url: str) -> HistoryRecord | None:
        """The newest completed record made from exactly this request, with a readable image.

        Only seeded requests qualify: without a seed the server is asked for a new picture.
        """
        if request.seed is None:
            return None
        key = reuse_key(request, base_url=base_url)
        for record in self.records():
            if record.reuse_key == key and record.status == COMPLETED and _readable(record):
                return record
        return None

    def load_image(self, job_id: str, *, reused: bool = False) -> GeneratedImage | None:
        """The saved result of a job as a ``GeneratedImage``, or None when there is none."""
        record = self.get(job_id)
        if record is None or record.path is None:
            return None
        return _load(record, reused=reused)

    def reuse(self, request: GenerationRequest, *, base_url: str) -> GeneratedImage | None:
        """``find_reusable`` + ``load_image``: a saved result for this request, marked reused."""
        if request.seed is None:
            return None
        key = reuse_key(request, base_url=base_url)
        for record in self.records():
            if record.reuse_key == key and record.status == COMPLETED and record.path:
                image = _load(record, reused=True)
                if image is not None:
                    return image
        return None

    # -- plumbing --------------------------------------------------------------------------

    def _record_path(self, job_id: str) -> Path:
        return self._home / "jobs" / f"{_file_name(_check_job_id(job_id))}.json"

    def _update(self, job_id: str, change: Callable[[dict[str, Any]], None]) -> HistoryRecord:
        """Read-merge-write one job's record under its lock, so concurrent updates all land."""
        job_id = _check_job_id(job_id)
        name = _file_name(job_id)
        path = self._home / "jobs" / f"{name}.json"
        self._make_dirs()
        with _locked(self._home / "locks" / f"{name}.lock"):
            data = _load_json(path) if path.is_file() else None
            if data is None:
                now = _now()
                data = {"format": _FORMAT, "version": _VERSION, "job_id": job_id}
                data["created_at"] = now
            change(data)
            data["updated_at"] = _now()
            text = json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
            _atomic_write(path, text.encode("utf-8"))
        record = _parse(data, home=self._home, fallback_time=datetime.now(timezone.utc))
        assert record is not None  # we just built it
        return record

    def _write_file(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, data)

    def _make_dirs(self) -> None:
        # Prompts are private: the data directory is the user's own.
        self._home.mkdir(mode=0o700, parents=True, exist_ok=True)
        for sub in ("jobs", "images", "locks"):
            (self._home / sub).mkdir(exist_ok=True)


def history(
    home: str | os.PathLike[str] | None = None, *, limit: int | None = None
) -> list[HistoryRecord]:
    """The recorded jobs, newest first (``miragic_nb.history()``)."""
    return History(home).records(limit)


def read_embedded_metadata(data: bytes) -> dict[str, Any] | None:
    """The ``{"miragic": ...}`` metadata embedded in saved image bytes, or None."""
    if data.startswith(b"\xff\xd8"):
        for payload in _jpeg_comments(data):
            try:
                value = json.loads(payload.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                continue
            if isinstance(value, dict) and isinstance(value.get(METADATA_KEY), dict):
                return dict(value[METADATA_KEY])
        return None
    if data.startswith(_PNG_SIGNATURE):
        for keyword, text in _png_texts(data):
            if keyword == METADATA_KEY:
                try:
                    value = json.loads(text)
                except ValueError:
                    return None
                return value if isinstance(value, dict) else None
    return None


# -- records on disk -----------------------------------------------------------------------


def _check_job_id(job_id: object) -> str:
    if not isinstance(job_id, str) or not job_id.strip():
        raise ValueError(f"job_id must be a non-empty string, got {job_id!r}")
    return job_id.strip()


def _file_name(job_id: str) -> str:
    """A file-name-safe stem for a job id; distinct ids never share one."""
    if _SAFE_ID.fullmatch(job_id):
        return job_id
    # Anything else (slashes, dots, spaces, very long ids) is cleaned and disambiguated by a
    # hash, so "a/b" and "a_b" do not collide and nothing can escape the directory.
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", job_id)[:64].strip("_-") or "job"
    digest = hashlib.sha256(job_id.encode("utf-8")).hexdigest()[:12]
    return f"{cleaned}~{digest}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _add_event(data: dict[str, Any], status: str, error_message: str | None) -> None:
    events = data.get("events")
    events = [e for e in events if isinstance(e, dict)] if isinstance(events, list) else []
    event: dict[str, Any] = {"status": status, "at": _now()}
    if error_message is not None:
        event["error_message"] = error_message
    events.append(event)
    data["events"] = events[-MAX_EVENTS:]


def _load_json(path: Path) -> dict[str, Any] | None:
    """A record file's contents, or None (with one warning) when it is not a record of ours."""
    try:
        raw = path.read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        _warn(path, f"unreadable ({type(exc).__name__})")
        return None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        _warn(path, "not a miragic-nb history record")
        return None
    job_id = data.get("job_id")
    if not isinstance(job_id, str) or _file_name(job_id) != path.stem:
        _warn(path, "its job_id does not match its file name")
        return None
    return data


def _read(path: Path) -> HistoryRecord | None:
    data = _load_json(path)
    if data is None:
        return None
    try:
        fallback = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
    except OSError:
        fallback = datetime.now(timezone.utc)
    return _parse(data, home=path.parent.parent, fallback_time=fallback)


def _parse(data: Mapping[str, Any], *, home: Path, fallback_time: datetime) -> HistoryRecord | None:
    """A record from its JSON, reading each field tolerantly (a bad field becomes None)."""
    job_id = data.get("job_id")
    if not isinstance(job_id, str):
        return None
    created = _time(data.get("created_at")) or fallback_time
    size = data.get("image_size")
    options = data.get("options")
    events = data.get("events")
    return HistoryRecord(
        job_id=job_id,
        status=_str(data.get("status")) or PENDING,
        created_at=created,
        updated_at=_time(data.get("updated_at")) or created,
        prompt=_str(data.get("prompt")),
        model=_str(data.get("model")),
        width=_int(data.get("width")),
        height=_int(data.get("height")),
        seed=_int(data.get("seed")),
        image_url=_str(data.get("image_url")),
        options=_options(options),
        base_url=_str(data.get("base_url")),
        path=_image_path(data.get("image"), home),
        result_url=_str(data.get("result_url")),
        error_message=_str(data.get("error_message")),
        elapsed_s=_float(data.get("elapsed_s")),
        processing_s=_float(data.get("processing_s")),
        credits_used=_float(data.get("credits_used")),
        server_created_at=_str(data.get("server_created_at")),
        image_size=(
            (size[0], size[1])
            if isinstance(size, list) and len(size) == 2 and all(_int(v) is not None for v in size)
            else None
        ),
        reuse_key=_str(data.get("reuse_key")),
        events=tuple(
            StatusEvent(str(e["status"]), at, _str(e.get("error_message")))
            for e in (events if isinstance(events, list) else [])
            if isinstance(e, dict) and _str(e.get("status")) and (at := _time(e.get("at")))
        ),
    )


def _image_path(value: object, home: Path) -> Path | None:
    # Stored relative to home (the directory can move); only images/<file> is accepted, so an
    # edited record cannot point the loader at an arbitrary file.
    if not isinstance(value, str):
        return None
    parts = value.split("/")
    if len(parts) != 2 or parts[0] != "images" or parts[1] in ("", ".", ".."):
        return None
    if "\\" in parts[1] or parts[1].startswith("."):
        return None
    return home / "images" / parts[1]


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _options(value: object) -> dict[str, bool | None]:
    if not isinstance(value, Mapping):
        return {}
    return {
        flag: value[flag] if isinstance(value.get(flag), bool) else None
        for flag in FLAGS
        if flag in value
    }


def _warn(path: Path, why: str) -> None:
    try:
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
    except OSError:
        key = (str(path), 0, 0)
    if key not in _warned:
        _warned.add(key)
        log.warning("skipping %s in the miragic history: %s", path, why)


# -- request fields and the reuse key -------------------------------------------------------


def _clean_base_url(base_url: str | None) -> str | None:
    return base_url.strip().rstrip("/") if isinstance(base_url, str) else None


def _request_fields(request: GenerationRequest, base_url: str | None) -> dict[str, Any]:
    return {**request.describe(), "base_url": _clean_base_url(base_url)}


def _metadata_request_fields(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The request part of a result's metadata, by allow-list (nothing else is persisted)."""
    return {
        "prompt": _str(meta.get("prompt")),
        "model": _str(meta.get("model")),
        "width": _int(meta.get("width")),
        "height": _int(meta.get("height")),
        "seed": _int(meta.get("seed")),
        "image_url": _str(meta.get("image_url")),
        "options": _options(meta.get("options")) if "options" in meta else None,
        "base_url": _clean_base_url(_str(meta.get("base_url"))),
    }


def _metadata_result_fields(meta: Mapping[str, Any]) -> dict[str, Any]:
    fields = {
        "result_url": _str(meta.get("result_url")),
        "elapsed_s": _float(meta.get("elapsed_s")),
        "processing_s": _float(meta.get("processing_s")),
        "credits_used": _float(meta.get("credits_used")),
        "server_created_at": _str(meta.get("created_at")),
    }
    return {key: value for key, value in fields.items() if value is not None}


def _reuse_key_of(record: Mapping[str, Any]) -> str:
    options = record.get("options")
    return _reuse_key(
        {
            "base_url": record.get("base_url"),
            "model": record.get("model"),
            "width": record.get("width"),
            "height": record.get("height"),
            "prompt": record.get("prompt"),
            "seed": record.get("seed"),
            "image_url": record.get("image_url"),
            "options": {flag: _options(options).get(flag) for flag in FLAGS},
        }
    )


def _reuse_key(fields: Mapping[str, Any]) -> str:
    # Canonical JSON (sorted keys, no spaces) so the same request hashes the same everywhere;
    # "v" changes if the key's meaning ever does, so old records simply stop matching.
    canonical = json.dumps(
        {"v": 1, **fields}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _readable(record: HistoryRecord) -> bool:
    """The saved image exists and its header names the format it was saved as."""
    if record.path is None:
        return False
    try:
        with record.path.open("rb") as handle:
            head = handle.read(16)
    except OSError:
        return False
    return _extension(head, None) == record.path.suffix.lstrip(".")


def _load(record: HistoryRecord, *, reused: bool) -> GeneratedImage | None:
    # Pillow loads here, not at import: ``miragic_nb.history`` stays cheap to import.
    from .errors import DownloadError
    from .images import GeneratedImage

    assert record.path is not None
    try:
        data = record.path.read_bytes()
        metadata = record.metadata()
        if reused:
            metadata["reused"] = True
        return GeneratedImage.from_bytes(data, metadata)
    except (OSError, DownloadError) as exc:
        log.warning("cannot load the saved image of job %s: %s", record.job_id, exc)
        return None


# -- atomic writes and locks -----------------------------------------------------------------


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` all at once: readers see the old file or the new one."""
    temp = _write_temp(path, data)
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _sync_dir(path.parent)


def _write_temp(path: Path, data: bytes) -> Path:
    """Write ``data`` to a new temp file beside ``path`` (same filesystem, so the rename is
    atomic). Its name starts with "." and ends with ".tmp": readers never pick it up."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def _sync_dir(folder: Path) -> None:
    # Makes the rename itself durable on POSIX; not possible (nor needed) on Windows.
    if sys.platform == "win32":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` across processes (and threads)."""
    with path.open("a+b") as handle:
        if sys.platform == "win32":
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
        else:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if sys.platform == "win32":
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
            else:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# -- metadata inside image files --------------------------------------------------------------


def _extension(data: bytes, fallback_format: str | None) -> str:
    """The file extension for image bytes, from their magic number (not a claimed format)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data.startswith(_PNG_SIGNATURE):
        return "png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if fallback_format is None:
        return ""
    return _EXTENSIONS.get(fallback_format, re.sub(r"[^a-z0-9]", "", fallback_format.lower()))


def _embedded_metadata(record: Mapping[str, Any]) -> dict[str, Any]:
    """How the image was made, for the file itself. No result URL: it is signed and temporary."""
    keys = ("job_id", "prompt", "model", "width", "height", "seed", "image_url", "options")
    meta = {key: record.get(key) for key in keys}
    meta["base_url"] = record.get("base_url")
    meta["generator"] = APP_NAME
    return meta


def embed_metadata(data: bytes, meta: dict[str, Any]) -> bytes:
    """``data`` with ``meta`` embedded as the history does it (``read_embedded_metadata`` reads it).

    A JPEG comment or a PNG iTXt chunk; other formats (or a failure) come back unchanged.
    """
    return _embed(data, meta)


def _embed(data: bytes, meta: dict[str, Any]) -> bytes:
    """The image bytes with ``meta`` added as metadata; pixels are never re-encoded."""
    try:
        if data.startswith(b"\xff\xd8"):
            return jpeg_insert_comment(data, _jpeg_payload(meta))
        if data.startswith(_PNG_SIGNATURE):
            text = json.dumps(meta, ensure_ascii=False, separators=(",", ":"))
            return png_insert_itxt(data, METADATA_KEY, text)
    except ValueError as exc:
        log.warning("saving job %s without embedded metadata: %s", meta.get("job_id"), exc)
        return data
    # Other formats are saved as sent; the JSON record still says how they were made.
    return data


def _jpeg_payload(meta: dict[str, Any]) -> bytes:
    def encode(value: dict[str, Any]) -> bytes:
        text = json.dumps({METADATA_KEY: value}, ensure_ascii=False, separators=(",", ":"))
        return text.encode("utf-8")

    payload = encode(meta)
    prompt = meta.get("prompt")
    # One COM segment holds 64 KB; only an absurdly long prompt is shortened to fit.
    while len(payload) > _JPEG_MAX_SEGMENT and isinstance(prompt, str) and prompt:
        prompt = prompt[: max(len(prompt) - (len(payload) - _JPEG_MAX_SEGMENT) - 64, 0)]
        payload = encode({**meta, "prompt": prompt, "prompt_truncated": True})
    return payload


def jpeg_insert_comment(data: bytes, comment: bytes) -> bytes:
    """Insert a COM segment into JPEG bytes, leaving every other byte as it was.

    It goes after the leading APPn (JFIF/EXIF must stay first) and COM segments, before the
    tables and frame, so it is the comment Pillow reports as ``info["comment"]``.
    """
    if not data.startswith(b"\xff\xd8"):
        raise ValueError("not JPEG data (no SOI marker)")
    if len(comment) > _JPEG_MAX_SEGMENT:
        raise ValueError(f"a JPEG comment holds at most {_JPEG_MAX_SEGMENT} bytes")
    position = 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if not (0xE0 <= marker <= 0xEF or marker == 0xFE):
            break
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if length < 2 or position + 2 + length > len(data):
            break  # malformed: stay on the last sound segment boundary
        position += 2 + length
    segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
    return data[:position] + segment + data[position:]


def _jpeg_comments(data: bytes) -> Iterator[bytes]:
    """The payloads of the COM segments before the first scan."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xDA or marker == 0xD9:  # start of scan / end of image
            return
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if length < 2:
            return
        if marker == 0xFE:
            yield data[position + 4 : position + 2 + length]
        position += 2 + length


def png_insert_itxt(data: bytes, keyword: str, text: str) -> bytes:
    """Insert an uncompressed UTF-8 ``iTXt`` chunk right after ``IHDR``; nothing else changes.

    Early text chunks are in ``Image.open(path).info`` before any pixel data is read.
    """
    if not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not PNG data (no signature and IHDR)")
    name = keyword.encode("latin-1")
    if not 1 <= len(name) <= 79 or b"\x00" in name:
        raise ValueError(f"invalid PNG text keyword {keyword!r}")
    end_of_ihdr = 8 + 12 + int.from_bytes(data[8:12], "big")
    # keyword, NUL, compression flag 0, method 0, empty language tag + NUL, empty
    # translated keyword + NUL, then the text.
    body = name + b"\x00\x00\x00\x00\x00" + text.encode("utf-8")
    chunk = (
        len(body).to_bytes(4, "big")
        + b"iTXt"
        + body
        + zlib.crc32(b"iTXt" + body).to_bytes(4, "big")
    )
    return data[:end_of_ihdr] + chunk + data[end_of_ihdr:]


def _png_texts(data: bytes) -> Iterator[tuple[str, str]]:
    """(keyword, text) of the uncompressed tEXt and iTXt chunks."""
    position = 8
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if kind == b"IEND":
            return
        if kind == b"tEXt" and b"\x00" in body:
            keyword, _, text = body.partition(b"\x00")
            yield keyword.decode("latin-1"), text.decode("latin-1")
        elif kind == b"iTXt" and body.count(b"\x00") >= 3:
            keyword, _, rest = body.partition(b"\x00")
            if rest[:1] == b"\x00":  # uncompressed
                _, _, rest = rest[2:].partition(b"\x00")  # language tag
                _, _, text = rest.partition(b"\x00")  # translated keyword
                yield keyword.decode("latin-1"), text.decode("utf-8", "replace")
        position += 12 + length
