"""The Miragic API calls: ``create`` (one ``POST``), ``get_job`` and ``wait`` (status reads,
timed by ``polling``) and ``download`` (the result's bytes).

Every failure becomes one typed error (``errors``); the session, its retries, the deadlines and
size caps live in ``transport``. Status reads and downloads retry connection errors, read
errors, 429 and 502/503/504; the create ``POST`` retries only what certainly created no job (a
connection that never opened, a 429). Nothing here records anything: the engine does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from miragic_nb._api import transport
from miragic_nb._core import config, context
from miragic_nb._core.errors import (
    APIConnectionError,
    APIError,
    DownloadError,
    JobFailedError,
    JobTimeoutError,
    MiragicError,
    MissingAPIKeyError,
    RateLimitError,
    server_text,
)
from miragic_nb._core.images import MAX_PIXELS
from miragic_nb._core.jobs import Job, check_job_id, job_id_of
from miragic_nb._core.polling import (
    DurationLearner,
    PollSchedule,
    RecentSubmissions,
    Submission,
)
from miragic_nb._core.request import GenerationRequest
from miragic_nb._core.result_info import whole_number
from miragic_nb._core.urls import strip_userinfo

if TYPE_CHECKING:
    import requests

log = logging.getLogger("miragic_nb")

CREATE_PATH = "/api/v1/image/generate"
JOB_PATH = "/api/v1/image/jobs/"
#: Largest result body accepted; a 2048×2048 JPEG is a few MB.
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
#: Answers of a result host for a file that has expired or is gone.
GONE_STATUSES = (403, 404, 410)
#: Tries for a result download whose connection breaks mid-body.
DOWNLOAD_ATTEMPTS = 3

ProgressCallback = Callable[[Job], None]


@dataclass(frozen=True)
class _Timing:
    connect: float = config.CONNECT_TIMEOUT_S
    read: float = config.READ_TIMEOUT_S

    def as_tuple(self) -> tuple[float, float]:
        return (self.connect, self.read)


class MiragicAPI(config.HoldsKey):
    """The API calls over one HTTP session; the engine's ``APIPort``.

    The key is sent only to ``base_url``'s origin, also with the caller's own ``session``.
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
        session: requests.Session | None = None,
    ) -> None:
        # Rebind the argument first: a traceback that captures locals (IPython's verbose mode,
        # capture_locals=True) then shows only the Secret, whatever fails below.
        api_key = config.as_secret(api_key)
        self._api_key = api_key
        self.base_url = config.base_url_from_env(base_url)
        self.timeout = config.check_timeout(timeout)
        self.poll_schedule = poll_schedule or PollSchedule()
        # How long earlier jobs took per model and size, to time status reads (share one
        # learner between clients to pool what they saw).
        self.durations = durations if durations is not None else DurationLearner()
        self._submissions = RecentSubmissions()
        self.max_download_bytes = max_download_bytes
        self.max_pixels = max_pixels
        self._timing = _Timing(connect_timeout, read_timeout)
        self._session = transport.make_session(
            self.base_url, CREATE_PATH, self._api_key, session=session
        )

    def __repr__(self) -> str:
        # getattr: a traceback may show an object whose __init__ raised half-way.
        key = "set" if getattr(self, "_api_key", None) else "not set"
        return f"MiragicAPI(base_url={getattr(self, 'base_url', None)!r}, api_key={key})"

    @property
    def has_api_key(self) -> bool:
        return self._api_key is not None

    def close(self) -> None:
        self._session.close()

    def create(self, request: GenerationRequest) -> Job:
        """Send an already validated request to the create endpoint, exactly once.

        Low level: nothing is recorded; ``submit`` records the id.
        """
        self.require_key()
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
        self.require_key()
        job_id = check_job_id(job_id)
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
        ``timeout`` seconds, or at the deadline of an enclosing job (the job id is in both).
        Transient faults while polling (connection errors, 5xx, 429, malformed answers) do not
        end the wait; they are retried until the deadline. ``cancel``, when set, stops
        polling at the next step with ``JobTimeoutError``.
        """
        limit = self.timeout if timeout is None else config.check_timeout(timeout)
        deadline = time.monotonic() + min(limit, context.time_left())
        job_id = job_or_id.id if isinstance(job_or_id, Job) else check_job_id(job_or_id)
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

    def _status_reads(
        self,
        job_id: str,
        deadline: float,
        cancel: threading.Event | None,
        failures: list[MiragicError],
    ) -> Iterator[Job]:
        """Each status read of a job up to a monotonic ``deadline``, sleeping between reads
        per ``poll_schedule``; ``failures`` holds the failed read since the last good one
        (failed reads are retried).

        A job this client just created is first read near its expected end: from the
        server's progress once it reports some, else from how long earlier jobs of the same
        model and size took (``durations``). A job resumed by id is read at once. Ends when
        the job is finished (after yielding it), at the deadline, or on ``cancel``.
        """
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
                with context.deadline(deadline):
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
        width, height = whole_number(params.get("width")), whole_number(params.get("height"))
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
            if exc.status_code not in GONE_STATUSES:
                raise
            log.info("result URL of job %s refused (%s); reading a fresh one", job.id, exc)
        fresh = self.get_job(job.id)
        if not fresh.result_url:
            raise DownloadError(
                "the job has no result URL any more", status_code=200, job_id=job.id
            )
        return self._fetch_with_retries(fresh.result_url, job_id=job.id, cancel=cancel), fresh

    def result_url_refused(self, url: str) -> bool:
        """True when the result host answers a ``HEAD`` of ``url`` with 403, 404 or 410 (an
        expired signature, a removed file); any other answer or failure leaves it to the API."""
        import requests

        try:
            transport.refuse_link_local(url)
            with (
                transport.result_fetch(),
                self._session.head(
                    url, timeout=transport.timeouts(*self._timing.as_tuple()), allow_redirects=True
                ) as response,
            ):
                return response.status_code in GONE_STATUSES
        except (requests.RequestException, transport.LinkLocalConnectError) as exc:
            log.info("could not check result URL %s (%s)", strip_userinfo(url), exc)
            return False

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
                    context.sleep(pause)
                elif cancel.wait(min(pause, context.time_left())):
                    raise  # cancelled (Ctrl-C, Cancel): no further request
        raise AssertionError("unreachable")

    # -- plumbing --------------------------------------------------------------------------

    def require_key(self) -> None:
        """Refuse (``MissingAPIKeyError``) when there is no key to send."""
        if self._api_key is None:
            raise MissingAPIKeyError(
                "no Miragic API key: pass Client(api_key=...), set the MIRAGIC_API_KEY "
                "environment variable, or run `%miragic login` in a notebook",
                field="api_key",
            )

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
