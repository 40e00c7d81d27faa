"""The Miragic API client: create a job (once), poll it, download and decode the result.

Every API call goes through ``Client._send`` and every download through ``Client._fetch``,
where every failure becomes one typed error (``errors.py``); the session, its retries, the
deadlines and size caps live in ``transport.py``. Status reads and downloads retry connection
errors, read errors, 429 and 502/503/504; the create ``POST`` retries only what certainly
created no job (a connection that never opened, a 429). A whole generation runs under one
deadline (``timeout``), which bounds every request and every wait inside it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from . import config, transport
from .errors import (
    APIConnectionError,
    APIError,
    DownloadError,
    InvalidRequestError,
    JobFailedError,
    JobTimeoutError,
    MiragicError,
    MissingAPIKeyError,
    RateLimitError,
    server_text,
)
from .history import CANCELLED, ERROR, FAILED, TIMEOUT, History
from .images import MAX_PIXELS, GeneratedImage
from .interrupts import deferred_interrupt
from .jobs import Job, job_id_of
from .polling import (
    DurationLearner,
    PollSchedule,
    RecentSubmissions,
    Submission,
)
from .request import GenerationRequest

log = logging.getLogger("miragic_nb")

CREATE_PATH = "/api/v1/image/generate"
JOB_PATH = "/api/v1/image/jobs/"
#: Largest result body accepted; a 2048×2048 JPEG is a few MB.
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
#: What a job id may look like (the API's are UUIDs); it becomes a URL path segment.
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
#: Tries for a result download whose connection breaks mid-body.
DOWNLOAD_ATTEMPTS = 3

ProgressCallback = Callable[[Job], None]


@dataclass(frozen=True)
class _Timing:
    connect: float = config.CONNECT_TIMEOUT_S
    read: float = config.READ_TIMEOUT_S

    def as_tuple(self) -> tuple[float, float]:
        return (self.connect, self.read)


class Client(config.HoldsKey):
    """A client for the Miragic image API.

    ``api_key`` defaults to ``MIRAGIC_API_KEY``; ``base_url`` to ``MIRAGIC_BASE_URL``, else
    ``https://backend.miragic.ai``. The key is sent only to the base URL's origin.
    """

    def __init__(
        self,
        api_key: str | config.Secret | None = None,
        base_url: str | None = None,
        *,
        timeout: float = config.DEFAULT_JOB_TIMEOUT_S,
        connect_timeout: float = config.CONNECT_TIMEOUT_S,
        read_timeout: float = config.READ_TIMEOUT_S,
        poll_schedule: PollSchedule | None = None,
        max_download_bytes: int = MAX_DOWNLOAD_BYTES,
        max_pixels: int = MAX_PIXELS,
        durations: DurationLearner | None = None,
        history: History | bool = True,
    ) -> None:
        # Rebind the argument first: a traceback that captures locals (IPython's verbose mode,
        # capture_locals=True) then shows only the Secret, whatever fails below.
        api_key = _as_secret(api_key)
        self._api_key = api_key
        self.base_url = config.base_url_from_env(base_url)
        #: Where job ids and results are recorded (``True``: ``MIRAGIC_HOME`` / platform dir).
        self.history: History | None = History() if history is True else history or None
        self.timeout = _check_timeout(timeout)
        self.poll_schedule = poll_schedule or PollSchedule()
        # How long earlier jobs took per model and size, to time status reads (share one
        # learner between clients to pool what they saw).
        self.durations = durations if durations is not None else DurationLearner()
        self._submissions = RecentSubmissions()
        self.max_download_bytes = max_download_bytes
        self.max_pixels = max_pixels
        self._timing = _Timing(connect_timeout, read_timeout)
        self._session = transport.make_session(self.base_url, CREATE_PATH, self._api_key)

    def __repr__(self) -> str:
        # getattr: a traceback may show a client whose __init__ raised half-way.
        key = "set" if getattr(self, "_api_key", None) else "not set"
        return f"Client(base_url={getattr(self, 'base_url', None)!r}, api_key={key})"

    @property
    def has_api_key(self) -> bool:
        return self._api_key is not None

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the API ---------------------------------------------------------------------------

    def create_job(
        self,
        prompt: str,
        *,
        model: str = "flux",
        width: int = 1024,
        height: int = 1024,
        image_url: str | None = None,
        seed: int | None = None,
        enhance: bool | None = None,
        safe: bool | None = None,
        private: bool | None = None,
        nologo: bool | None = None,
    ) -> Job:
        """Start one generation (costs a credit) and return the ``PENDING`` job."""
        request = GenerationRequest(
            prompt,
            model=model,
            width=width,
            height=height,
            image_url=image_url,
            seed=seed,
            enhance=enhance,
            safe=safe,
            private=private,
            nologo=nologo,
        )
        return self.submit(request)

    def submit(self, request: GenerationRequest) -> Job:
        """Send an already validated request to the create endpoint, exactly once."""
        self._require_key()
        # multipart/form-data like the reference's curl examples (docs/api-contract.md, D1).
        files = {name: (None, value) for name, value in request.form_fields().items()}
        sent_at = time.monotonic()
        body = self._send("POST", self.base_url + CREATE_PATH, files=files)
        create_seconds = time.monotonic() - sent_at
        data = body.get("data")
        if not isinstance(data, dict):
            raise APIError("create answer has no 'data' object", status_code=200)
        job_id = job_id_of(data)
        if job_id is None:
            raise APIError("create answer has no jobId", status_code=200)
        # The id is what makes a paid-for job recoverable: whatever else is odd in the answer,
        # the job is kept (the rest is read tolerantly, and a status read will say more).
        job = Job.from_record(data, base_url=self.base_url)
        log.info("created job %s (model=%s)", job.id, request.model)
        self._submissions.add(
            job.id,
            Submission(request.model, request.width, request.height, sent_at, create_seconds),
        )
        return job

    def get_job(self, job_id: str) -> Job:
        """Read a job's current status."""
        self._require_key()
        job_id = _check_job_id(job_id)
        body = self._send("GET", self.base_url + JOB_PATH + quote(job_id, safe=""), job_id=job_id)
        data = body.get("data")
        if not isinstance(data, dict):
            raise APIError("status answer has no 'data' object", status_code=200, job_id=job_id)
        named = job_id_of(data)
        if named is not None and named != job_id:
            # Never let one job's answer stand for another: treated as a failed read.
            raise APIError(
                f"the answer names another job ({server_text(named, 40)})",
                status_code=200,
                job_id=job_id,
            )
        return Job.from_record({**data, "id": job_id}, base_url=self.base_url)

    def wait(
        self,
        job_or_id: Job | str,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> Job:
        """Poll until the job is ``COMPLETED`` and return it.

        Raises ``JobFailedError`` for a ``FAILED`` job and ``JobTimeoutError`` after
        ``timeout`` seconds (the job id is in both). Transient faults while polling (connection
        errors, 5xx, 429, malformed answers) do not end the wait; they are retried until the
        deadline. ``cancel``, when set, stops polling at the next step with ``JobTimeoutError``.
        """
        limit = self.timeout if timeout is None else _check_timeout(timeout)
        return self._wait(
            job_or_id, time.monotonic() + limit, limit, on_progress=on_progress, cancel=cancel
        )

    def _wait(
        self,
        job_or_id: Job | str,
        deadline: float,
        limit: float,
        *,
        on_progress: ProgressCallback | None,
        cancel: threading.Event | None,
    ) -> Job:
        """``wait`` until a monotonic ``deadline``, ``limit`` seconds after the work began."""
        job_id = job_or_id.id if isinstance(job_or_id, Job) else _check_job_id(job_or_id)
        last: Job | None = job_or_id if isinstance(job_or_id, Job) else None
        failures: list[MiragicError] = []
        for job in self._status_reads(job_id, deadline, cancel, failures):
            last = job
            if on_progress is not None:
                on_progress(job)
            if job.is_completed:
                return job
            if job.is_failed:
                reason = server_text(job.error_message or "no reason given")
                raise JobFailedError(f"job {job.id} failed: {reason}", job=job)
        stopped = cancel is not None and cancel.is_set()
        message = (
            f"stopped waiting for job {job_id}"
            if stopped
            else f"job {job_id} did not finish within {limit:g}s"
        )
        message += f"; it may still finish: client.wait({job_id!r}) picks it up"
        if failures and not stopped:
            message += f" (last status read: {server_text(failures[-1].message, 70)})"
        raise JobTimeoutError(message, job_id=job_id, last_job=last)

    def iter_status(
        self, job_id: str, *, timeout: float, cancel: threading.Event | None = None
    ) -> Iterator[Job]:
        """Yield each status read of a job, sleeping between reads per ``poll_schedule``.

        A job this client just created is first read near its expected end: from the
        server's progress once it reports some, else from how long earlier jobs of the same
        model and size took (``durations``). A job resumed by id is read at once. Ends when
        the job is finished (after yielding it), at the deadline, or on ``cancel``.
        """
        yield from self._status_reads(job_id, time.monotonic() + timeout, cancel, [])

    def _status_reads(
        self,
        job_id: str,
        deadline: float,
        cancel: threading.Event | None,
        failures: list[MiragicError],
    ) -> Iterator[Job]:
        """``iter_status`` up to a monotonic ``deadline``; ``failures`` holds the failed read
        since the last good one (failed reads are retried)."""
        start = time.monotonic()
        submission = self._submissions.pop(job_id)
        if submission is None:
            zero = start
            plan = self.poll_schedule.plan()
        else:
            zero = submission.sent_at
            plan = self.poll_schedule.plan(
                create_seconds=submission.create_seconds,
                expected=self.durations.estimate(*submission.kind),
            )

        def pause(seconds: float) -> bool:
            """Sleep up to the deadline; True when the wait should end instead."""
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            if cancel is not None:
                return cancel.wait(min(seconds, remaining))
            time.sleep(min(seconds, remaining))
            return False

        first = plan.first_delay(elapsed=start - zero)
        if first > 0 and pause(first):
            return
        saw_progress = False
        failed_reads = 0
        while True:
            delay: float
            try:
                with transport.deadline(deadline):
                    job = self.get_job(job_id)
            except (APIConnectionError, RateLimitError, APIError) as exc:
                if isinstance(exc, APIError) and 400 <= exc.status_code < 500:
                    raise  # e.g. 404: waiting longer will not help
                if time.monotonic() < deadline:  # not merely cut off by the deadline itself
                    failures[:] = [exc]
                failed_reads += 1
                log.warning("status read for job %s failed (%s); retrying", job_id, exc)
                retry_after = exc.retry_after if isinstance(exc, RateLimitError) else None
                backoff = min(0.5 * 2 ** min(failed_reads, 16), self.poll_schedule.max_delay)
                delay = min(retry_after or backoff, transport.MAX_READ_RETRY_AFTER_S)
            else:
                failures.clear()
                failed_reads = 0
                if job.is_completed:
                    self._learn_duration(job, submission, progress=saw_progress)
                saw_progress = saw_progress or job.progress is not None
                yield job
                if job.is_finished:
                    return
                delay = plan.next_delay(elapsed=time.monotonic() - zero, progress=job.progress)
            if pause(delay):
                return

    def _learn_duration(self, job: Job, submission: Submission | None, *, progress: bool) -> None:
        """Feed a completed job's server-side duration to ``durations``."""
        seconds = job.processing_seconds
        if seconds is None:
            return
        if submission is not None:
            self.durations.observe(*submission.kind, seconds, progress=progress)
            return
        params = job.parameters
        width, height = _whole_number(params.get("width")), _whole_number(params.get("height"))
        if params.get("model") and width is not None and height is not None:
            self.durations.observe(params["model"], width, height, seconds, progress=progress)

    def download(self, job: Job, *, cancel: threading.Event | None = None) -> tuple[bytes, Job]:
        """Fetch a completed job's image bytes; returns them with the job they came from.

        A 403/404 on the result URL (signed URLs expire) re-reads the job once for a fresh URL.
        ``cancel``, when set, stops retrying a failed download.
        """
        if not job.result_url:
            raise DownloadError(
                "the completed job has no result URL", status_code=200, job_id=job.id
            )
        try:
            return self._fetch_with_retries(job.result_url, job_id=job.id, cancel=cancel), job
        except DownloadError as exc:
            if exc.status_code not in (403, 404, 410):
                raise
            log.info("result URL of job %s refused (%s); reading a fresh one", job.id, exc)
        fresh = self.get_job(job.id)
        if not fresh.result_url:
            raise DownloadError(
                "the job has no result URL any more", status_code=200, job_id=job.id
            )
        return self._fetch_with_retries(fresh.result_url, job_id=job.id, cancel=cancel), fresh

    def _fetch_with_retries(
        self, url: str, *, job_id: str, cancel: threading.Event | None = None
    ) -> bytes:
        # urllib3 retries a GET only until the headers arrive; a body cut mid-way, or a 500
        # from the file server, is retried here (the download is idempotent and the job is
        # already paid for).
        for attempt in range(DOWNLOAD_ATTEMPTS):
            try:
                return self._fetch(url, job_id=job_id)
            except DownloadError as exc:
                # 0: the connection broke; another 5xx: the file server failed (urllib3 has
                # already spent its own retries on 502/503/504).
                code = exc.status_code
                transient = code == 0 or (code >= 500 and code not in transport.RETRIED_STATUSES)
                if not transient or attempt == DOWNLOAD_ATTEMPTS - 1:
                    raise
                log.info("download of job %s failed (%s); retrying", job_id, exc)
                pause = 0.25 * 2**attempt
                if cancel is None:
                    transport.sleep(pause)
                elif cancel.wait(min(pause, transport.time_left())):
                    raise  # cancelled (Ctrl-C, Cancel): no further request
        raise AssertionError("unreachable")

    def generate(
        self,
        prompt: str,
        *,
        model: str = "flux",
        width: int = 1024,
        height: int = 1024,
        image_url: str | None = None,
        seed: int | None = None,
        enhance: bool | None = None,
        safe: bool | None = None,
        private: bool | None = None,
        nologo: bool | None = None,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        reuse: bool = True,
    ) -> GeneratedImage:
        """Create a job, wait for it, download and decode the image.

        The result is a ``PIL.Image.Image`` (``GeneratedImage``) whose ``info["miragic"]``
        says how it was made and whose ``original_bytes`` are the server's own. With an
        explicit ``seed``, a saved result of the very same request is returned without a new
        job (``reuse=False`` forces one).
        """
        request = GenerationRequest(
            prompt,
            model=model,
            width=width,
            height=height,
            image_url=image_url,
            seed=seed,
            enhance=enhance,
            safe=safe,
            private=private,
            nologo=nologo,
        )
        return self.run(request, timeout=timeout, on_progress=on_progress, reuse=reuse)

    def run(
        self,
        request: GenerationRequest,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        on_created: Callable[[Job], None] | None = None,
        cancel: threading.Event | None = None,
        reuse: bool = True,
    ) -> GeneratedImage:
        """``generate`` for a ready ``GenerationRequest``; ``on_created`` sees the job id first."""
        started = time.monotonic()
        # Checked before the job is paid for, not after.
        limit = self.timeout if timeout is None else _check_timeout(timeout)
        if reuse and self.history is not None:
            saved = self.history.reuse(request, base_url=self.base_url)
            if saved is not None:
                log.info("reused job %s from history", saved.metadata.get("job_id"))
                return saved
        # A Ctrl-C while the create is on the wire waits until the id is recorded: otherwise it
        # would lose the id of a job already paid for.
        with deferred_interrupt(), transport.deadline(started + limit):
            job = self.submit(request)
            recorded = _without_userinfo(request)
            self._record(lambda h: h.record_created(job.id, recorded, base_url=self.base_url))
        if on_created is not None:
            on_created(job)
        try:
            return self.finish(
                job,
                request,
                started=started,
                timeout=limit,
                on_progress=on_progress,
                cancel=cancel,
            )
        except MiragicError as exc:
            exc.job_id = exc.job_id or job.id
            raise
        except KeyboardInterrupt:
            self._record(lambda h: h.record_status(job.id, CANCELLED))
            raise

    def finish(
        self,
        job: Job | str,
        request: GenerationRequest | None = None,
        *,
        started: float | None = None,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> GeneratedImage:
        """Wait for an existing job and return its image (no new job is created).

        ``request`` supplies the metadata; without it, the server's recorded parameters do.
        ``timeout`` counts from ``started`` (default: now) and covers the download too.
        """
        started = time.monotonic() if started is None else started
        limit = self.timeout if timeout is None else _check_timeout(timeout)
        deadline = started + limit
        job_id = job.id if isinstance(job, Job) else _check_job_id(job)
        try:
            with transport.deadline(deadline):
                done = self._wait(job, deadline, limit, on_progress=on_progress, cancel=cancel)
                data, done = self.download(done, cancel=cancel)
            metadata = self._metadata(done, request, elapsed=time.monotonic() - started)
            image = GeneratedImage.from_bytes(data, metadata, max_pixels=self.max_pixels)
        except Exception as exc:
            error = self._ended(exc, job_id, deadline=deadline, limit=limit, cancel=cancel)
            if error is exc:
                raise
            raise error from exc
        if image.size != (metadata["width"], metadata["height"]):
            image.info["miragic"]["size_mismatch"] = True
        image.info["miragic"]["image_size"] = list(image.size)
        self._record(lambda h: h.record_result(image))
        return image

    def _ended(
        self,
        exc: Exception,
        job_id: str,
        *,
        deadline: float,
        limit: float,
        cancel: threading.Event | None,
    ) -> MiragicError:
        """The error a generation that failed with ``exc`` ends in, recorded in the history.

        Only ``MiragicError`` leaves the client: anything else (a server answer no reader
        foresaw) becomes one, with the job id. A download cut off by the deadline is the job
        not finishing in time.
        """
        error: MiragicError
        if not isinstance(exc, MiragicError):
            error = MiragicError(
                f"unexpected {type(exc).__name__} while finishing job {job_id}: "
                f"{server_text(str(exc), 80)}"
            )
        elif isinstance(exc, (JobFailedError, JobTimeoutError)) or time.monotonic() < deadline:
            error = exc
        else:
            error = JobTimeoutError(
                f"job {job_id} did not finish within {limit:g}s ({server_text(exc.message, 90)}); "
                f"it may still finish: client.finish({job_id!r}) picks it up",
                job_id=job_id,
            )
        error.job_id = error.job_id or job_id
        status, message = _final_status(error, cancel)
        self._record(lambda h: h.record_status(job_id, status, error_message=message))
        return error

    # -- plumbing --------------------------------------------------------------------------

    def _record(self, write: Callable[[History], object]) -> None:
        """Write to the history; whatever goes wrong there is logged and never replaces the
        job's own outcome (a disk problem, or a record it cannot store)."""
        if self.history is None:
            return
        try:
            write(self.history)
        except Exception as exc:
            log.warning(
                "could not write the job history in %s: %s: %s",
                self.history.home,
                type(exc).__name__,
                server_text(str(exc)),
            )

    def _require_key(self) -> None:
        if self._api_key is None:
            raise MissingAPIKeyError(
                "no Miragic API key: pass Client(api_key=...), set the MIRAGIC_API_KEY "
                "environment variable, or run `%miragic login` in a notebook",
                field="api_key",
            )

    def _metadata(
        self, job: Job, request: GenerationRequest | None, *, elapsed: float
    ) -> dict[str, Any]:
        if request is None:
            request = _request_from_job(job)
        return {
            "job_id": job.id,
            **request.describe(),
            "image_url": transport.strip_userinfo(request.image_url) if request.image_url else None,
            "result_url": transport.strip_userinfo(job.result_url) if job.result_url else None,
            "elapsed_s": round(elapsed, 3),
            "processing_s": job.processing_seconds,
            "credits_used": job.credits_used,
            "created_at": job.created_at.isoformat() if job.created_at else None,
            "base_url": self.base_url,
        }

    def _send(
        self, method: str, url: str, *, job_id: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """The one choke point for API calls: a JSON object, or one typed error."""
        return transport.request_json(
            self._session,
            method,
            url,
            server=self.base_url,
            timing=self._timing.as_tuple(),
            job_id=job_id,
            **kwargs,
        )

    def _fetch(self, url: str, *, job_id: str) -> bytes:
        """A result image's bytes, size-capped; the session keeps the key on its origin."""
        return transport.fetch_bytes(
            self._session,
            url,
            timing=self._timing.as_tuple(),
            max_bytes=self.max_download_bytes,
            job_id=job_id,
        )


#: A whole number as ASCII digits (``str.isdigit`` also accepts "²", which int() refuses).
_DIGITS = re.compile(r"[0-9]{1,19}")


def _check_job_id(job_id: object) -> str:
    """A job id as the API returns them (a UUID); anything else is refused before sending."""
    text = job_id.strip() if isinstance(job_id, str) else ""
    if not _JOB_ID.fullmatch(text):
        raise InvalidRequestError(
            "job_id must be an id the API returned (letters, digits, '-', '_', '.', ':'), "
            f"got {repr(job_id)[:60]}",
            field="job_id",
        )
    return text


def _as_secret(api_key: object) -> config.Secret | None:
    """The key as a ``Secret`` (explicit, else ``MIRAGIC_API_KEY``); None when there is none."""
    if isinstance(api_key, config.Secret):
        api_key = api_key.reveal()
    if api_key is not None and not isinstance(api_key, str):
        raise InvalidRequestError(
            f"api_key must be a string, got {type(api_key).__name__}", field="api_key"
        )
    key = config.api_key_from_env(api_key)
    return config.Secret(key) if key is not None else None


def _check_timeout(timeout: object) -> float:
    """A job timeout: a positive number of seconds (``inf`` waits for ever)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise InvalidRequestError(
            f"timeout must be a positive number of seconds, got {timeout!r}", field="timeout"
        )
    return float(timeout)


def _final_status(exc: MiragicError, cancel: threading.Event | None) -> tuple[str, str | None]:
    """The history status (and message) for a wait that ended in ``exc``."""
    if isinstance(exc, JobFailedError):
        return FAILED, exc.server_message
    if isinstance(exc, JobTimeoutError):
        return (CANCELLED if cancel is not None and cancel.is_set() else TIMEOUT), None
    return ERROR, str(exc)


def _whole_number(text: str | None) -> int | None:
    """A recorded parameter as a whole number, when it is written in ASCII digits.

    ``str.isdigit`` also accepts "²", which ``int`` refuses: a server's odd parameter must
    never break a resume.
    """
    text = (text or "").strip()
    return int(text) if _DIGITS.fullmatch(text) else None


def _without_userinfo(request: GenerationRequest) -> GenerationRequest:
    """The request as the history may keep it: no ``user:password@`` in its image URL."""
    if request.image_url is None:
        return request
    return replace(request, image_url=transport.strip_userinfo(request.image_url))


def _request_from_job(job: Job) -> GenerationRequest:
    """Rebuild the request from the parameters the server recorded (for resumed jobs)."""
    params = job.parameters
    prompt = params.get("prompt") or str(job.raw.get("prompt") or "") or "(unknown prompt)"

    def flag(name: str) -> bool | None:
        value = params.get(name, "").lower()
        return {"true": True, "false": False}.get(value)

    try:
        return GenerationRequest(
            prompt,
            model=params.get("model") or "flux",
            width=_whole_number(params.get("width")) or 1024,
            height=_whole_number(params.get("height")) or 1024,
            image_url=params.get("image_url") or None,
            seed=_whole_number(params.get("seed")),
            enhance=flag("enhance"),
            safe=flag("safe"),
            private=flag("private"),
            nologo=flag("nologo"),
        )
    except InvalidRequestError:
        pass
    try:
        return GenerationRequest(prompt)
    except InvalidRequestError:
        return GenerationRequest("(unknown prompt)")
