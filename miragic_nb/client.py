"""The Miragic API client: create a job (once), poll it, download and decode the result.

Every HTTP call goes through ``Client._send``, where every failure becomes one typed error
(``errors.py``). Transport retries are urllib3's ``Retry``, configured per contract decision 8:
status reads and downloads retry connection errors, read errors, 429 and 502/503/504; the create
``POST`` retries only what certainly created no job (a connection that never opened, a 429).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from . import config
from .errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    DownloadError,
    InvalidRequestError,
    JobFailedError,
    JobTimeoutError,
    MiragicError,
    MissingAPIKeyError,
    RateLimitError,
    body_excerpt,
    message_from_body,
)
from .history import CANCELLED, ERROR, FAILED, TIMEOUT, History
from .images import MAX_PIXELS, GeneratedImage
from .interrupts import deferred_interrupt
from .jobs import Job
from .polling import (
    DurationLearner,
    PollSchedule,
    RecentSubmissions,
    Submission,
    parse_retry_after,
)
from .request import GenerationRequest

log = logging.getLogger("miragic_nb")

CREATE_PATH = "/api/v1/image/generate"
JOB_PATH = "/api/v1/image/jobs/"
#: Largest result body accepted; a 2048×2048 JPEG is a few MB.
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
#: Longest ``Retry-After`` honoured by sleeping inside one call.
MAX_RETRY_AFTER_S = 30.0
_CHUNK = 256 * 1024
#: What a job id may look like (the API's are UUIDs); it becomes a URL path segment.
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
#: Tries for a result download whose connection breaks mid-body.
DOWNLOAD_ATTEMPTS = 3

ProgressCallback = Callable[[Job], None]


class _CappedRetry(Retry):
    """urllib3 ``Retry`` that never sleeps longer than ``MAX_RETRY_AFTER_S`` for a Retry-After."""

    def get_retry_after(self, response: Any) -> float | None:
        seconds = parse_retry_after(response.headers.get("Retry-After"))
        return None if seconds is None else min(seconds, MAX_RETRY_AFTER_S)


class _CreateRetry(_CappedRetry):
    # A 503 may have reached the application; only a 429 certainly created no job.
    RETRY_AFTER_STATUS_CODES = frozenset({429})


#: Statuses urllib3 retries for GETs (status reads and downloads) before we see them.
_RETRIED_STATUSES = (429, 502, 503, 504)


def _read_retry() -> Retry:
    return _CappedRetry(
        total=5,
        connect=4,
        read=2,
        status=4,
        other=0,
        backoff_factor=0.25,
        backoff_max=4.0,
        status_forcelist=_RETRIED_STATUSES,
        allowed_methods=frozenset({"GET"}),
        respect_retry_after_header=True,
        raise_on_status=False,
        raise_on_redirect=False,
    )


def _create_retry() -> Retry:
    return _CreateRetry(
        total=4,
        connect=3,
        read=0,
        status=3,
        other=0,
        redirect=0,
        backoff_factor=0.5,
        backoff_max=4.0,
        status_forcelist=(429,),
        allowed_methods=frozenset({"POST"}),
        respect_retry_after_header=True,
        raise_on_status=False,
        raise_on_redirect=False,
    )


class _HeaderSecret(str, config.ImmutableKey):
    """The key as a header value: sent as itself, shown masked in reprs, never pickled.

    urllib3's and http.client's frames hold the headers dict while a request is on the wire;
    a traceback that captures locals (a Ctrl-C in IPython's verbose mode) prints it.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "'********'"


class _ApiKeyAuth(requests.auth.AuthBase):
    """Adds ``X-API-Key`` only to requests for the API's own origin."""

    def __init__(self, api_key: config.Secret, api_origin: tuple[str, str, int | None]) -> None:
        self._api_key = api_key
        self._api_origin = api_origin

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if request.url and config.origin(request.url) == self._api_origin:
            request.headers["X-API-Key"] = _HeaderSecret(self._api_key.reveal())
        else:
            request.headers.pop("X-API-Key", None)
        return request

    def __repr__(self) -> str:
        return "<API key auth (hidden)>"


class _OriginBoundSession(requests.Session):
    """A session that drops ``X-API-Key`` when a redirect leaves the API's origin.

    requests strips ``Authorization`` on a cross-host redirect but keeps custom headers.
    """

    def __init__(self, api_origin: tuple[str, str, int | None]) -> None:
        super().__init__()
        self.api_origin = api_origin

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: Any) -> None:
        super().rebuild_auth(prepared_request, response)  # type: ignore[no-untyped-call]
        if prepared_request.url and config.origin(prepared_request.url) != self.api_origin:
            prepared_request.headers.pop("X-API-Key", None)


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
        self._origin = config.origin(self.base_url)
        self._session = self._make_session()

    def _make_session(self) -> _OriginBoundSession:
        session = _OriginBoundSession(self._origin)
        session.headers["User-Agent"] = "miragic-nb/0.1 (+python-requests)"
        session.headers["Accept"] = "application/json"
        read_adapter = HTTPAdapter(max_retries=_read_retry(), pool_maxsize=32)
        session.mount("https://", read_adapter)
        session.mount("http://", read_adapter)
        # Longest prefix wins: the create endpoint gets the no-duplicate-job retry policy.
        session.mount(
            self.base_url + CREATE_PATH, HTTPAdapter(max_retries=_create_retry(), pool_maxsize=32)
        )
        if self._api_key:
            session.auth = _ApiKeyAuth(self._api_key, self._origin)
        return session

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
        # multipart/form-data like the reference's curl examples (contract decision 1).
        files = {name: (None, value) for name, value in request.form_fields().items()}
        sent_at = time.monotonic()
        body = self._send("POST", self.base_url + CREATE_PATH, files=files)
        create_seconds = time.monotonic() - sent_at
        data = body.get("data")
        if not isinstance(data, dict):
            raise APIError("create answer has no 'data' object", status_code=200)
        try:
            job = Job.from_record(data, base_url=self.base_url)
        except ValueError:
            raise APIError("create answer has no jobId", status_code=200) from None
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
        try:
            return Job.from_record({"id": job_id, **data}, base_url=self.base_url)
        except ValueError:
            raise APIError("status answer has no job id", status_code=200, job_id=job_id) from None

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
        job_id = job_or_id.id if isinstance(job_or_id, Job) else _check_job_id(job_or_id)
        limit = self.timeout if timeout is None else _check_timeout(timeout)
        last: Job | None = job_or_id if isinstance(job_or_id, Job) else None
        for job in self.iter_status(job_id, timeout=limit, cancel=cancel):
            last = job
            if on_progress is not None:
                on_progress(job)
            if job.is_completed:
                return job
            if job.is_failed:
                reason = job.error_message or "no reason given"
                raise JobFailedError(f"job {job.id} failed: {reason}", job=job)
        stopped = cancel is not None and cancel.is_set()
        message = (
            f"stopped waiting for job {job_id}"
            if stopped
            else f"job {job_id} did not finish within {limit:g}s"
        )
        raise JobTimeoutError(
            message + f"; it may still finish: client.wait({job_id!r}) picks it up",
            job_id=job_id,
            last_job=last,
        )

    def iter_status(
        self, job_id: str, *, timeout: float, cancel: threading.Event | None = None
    ) -> Iterator[Job]:
        """Yield each status read of a job, sleeping between reads per ``poll_schedule``.

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
            remaining = timeout - (time.monotonic() - start)
            if remaining <= 0:
                return True
            if cancel is not None:
                return cancel.wait(min(seconds, remaining))
            time.sleep(min(seconds, remaining))
            return False

        first = plan.first_delay(elapsed=start - zero)
        if first > 0 and pause(first):
            return
        failures = 0
        saw_progress = False
        while True:
            delay: float
            try:
                job = self.get_job(job_id)
            except (APIConnectionError, RateLimitError, APIError) as exc:
                if isinstance(exc, APIError) and 400 <= exc.status_code < 500:
                    raise  # e.g. 404: waiting longer will not help
                failures += 1
                log.warning("status read for job %s failed (%s); retrying", job_id, exc)
                retry_after = exc.retry_after if isinstance(exc, RateLimitError) else None
                delay = retry_after or min(0.5 * 2**failures, self.poll_schedule.max_delay)
            else:
                failures = 0
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
        width, height = params.get("width", ""), params.get("height", "")
        if params.get("model") and width.isdigit() and height.isdigit():
            kind = (params["model"], int(width), int(height))
            self.durations.observe(*kind, seconds, progress=progress)

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
                transient = code == 0 or (code >= 500 and code not in _RETRIED_STATUSES)
                if not transient or attempt == DOWNLOAD_ATTEMPTS - 1:
                    raise
                log.info("download of job %s failed (%s); retrying", job_id, exc)
                if (cancel or threading.Event()).wait(0.25 * 2**attempt):
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
        if timeout is not None:
            _check_timeout(timeout)  # before the job is paid for, not after
        if reuse and self.history is not None:
            saved = self.history.reuse(request, base_url=self.base_url)
            if saved is not None:
                log.info("reused job %s from history", saved.metadata.get("job_id"))
                return saved
        with deferred_interrupt():  # a Ctrl-C now would lose the id of a job already paid for
            job = self.submit(request)
            self._record(lambda h: h.record_created(job.id, request, base_url=self.base_url))
        if on_created is not None:
            on_created(job)
        try:
            return self.finish(
                job,
                request,
                started=started,
                timeout=timeout,
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
        """
        started = time.monotonic() if started is None else started
        job_id = job.id if isinstance(job, Job) else _check_job_id(job)
        try:
            done = self.wait(job, timeout=timeout, on_progress=on_progress, cancel=cancel)
            data, done = self.download(done, cancel=cancel)
            metadata = self._metadata(done, request, elapsed=time.monotonic() - started)
            image = GeneratedImage.from_bytes(data, metadata, max_pixels=self.max_pixels)
        except MiragicError as exc:
            exc.job_id = exc.job_id or job_id
            status, message = _final_status(exc, cancel)
            self._record(lambda h: h.record_status(job_id, status, error_message=message))
            raise
        if image.size != (metadata["width"], metadata["height"]):
            image.info["miragic"]["size_mismatch"] = True
        image.info["miragic"]["image_size"] = list(image.size)
        self._record(lambda h: h.record_result(image))
        return image

    # -- plumbing --------------------------------------------------------------------------

    def _record(self, write: Callable[[History], object]) -> None:
        """Write to the history; a disk problem is logged, never allowed to lose the job."""
        if self.history is None:
            return
        try:
            write(self.history)
        except OSError as exc:
            log.warning("could not write the job history in %s: %s", self.history.home, exc)

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
            "result_url": job.result_url,
            "elapsed_s": round(elapsed, 3),
            "processing_s": job.processing_seconds,
            "credits_used": job.credits_used,
            "created_at": job.created_at.isoformat() if job.created_at else None,
            "base_url": self.base_url,
        }

    def _send(
        self, method: str, url: str, *, job_id: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """The one choke point: send, then turn every failure into a typed error."""
        try:
            response = self._session.request(
                method, url, timeout=self._timing.as_tuple(), allow_redirects=False, **kwargs
            )
        except requests.RequestException as exc:
            if _is_read_timeout(exc):
                message = f"{self.base_url} did not answer within {self._timing.read:g}s"
            elif isinstance(exc, requests.ConnectionError) and _never_connected(exc):
                message = f"could not reach {self.base_url}: {_reason(exc)}"
            else:
                message = f"request to {self.base_url} failed: {_reason(exc)}"
            if method == "POST" and not _never_connected(exc):
                # The create may have reached the server; it is never sent twice (decision 8).
                message += "; a job may have been created all the same (never sent twice)"
            raise APIConnectionError(message, job_id=job_id) from None
        with response:
            return _parse_json(response, job_id=job_id)

    def _fetch(self, url: str, *, job_id: str) -> bytes:
        """Stream a result image with a size cap; the session keeps the key on its origin."""
        try:
            with self._session.get(
                url,
                timeout=self._timing.as_tuple(),
                stream=True,
                allow_redirects=True,
                headers={"Accept": "image/*"},
            ) as response:
                if response.status_code >= 400:
                    raise DownloadError(
                        f"result download answered {response.status_code}",
                        status_code=response.status_code,
                        job_id=job_id,
                    )
                return self._read_capped(response, job_id=job_id)
        except requests.RequestException as exc:
            raise DownloadError(
                f"result download failed: {_reason(exc)}", status_code=0, job_id=job_id
            ) from None

    def _read_capped(self, response: requests.Response, *, job_id: str) -> bytes:
        declared = response.headers.get("Content-Length")
        expected = int(declared) if declared and declared.isdigit() else None
        if expected is not None and expected > self.max_download_bytes:
            raise DownloadError(
                f"result is {expected:,} bytes, over the {self.max_download_bytes:,}-byte cap",
                status_code=response.status_code,
                job_id=job_id,
            )
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_content(_CHUNK):
            size += len(chunk)
            if size > self.max_download_bytes:
                raise DownloadError(
                    f"result exceeds the {self.max_download_bytes:,}-byte cap",
                    status_code=response.status_code,
                    job_id=job_id,
                )
            chunks.append(chunk)
        data = b"".join(chunks)
        encoded = response.headers.get("Content-Encoding", "identity").lower()
        if expected is not None and encoded == "identity" and len(data) != expected:
            raise DownloadError(
                f"result download was cut short: {len(data):,} of {expected:,} bytes",
                status_code=response.status_code,
                job_id=job_id,
            )
        return data


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


def _is_read_timeout(exc: BaseException) -> bool:
    """requests reports an exhausted urllib3 read timeout as a ConnectionError; find it."""
    if isinstance(exc, requests.ReadTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, urllib3.exceptions.ReadTimeoutError)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the errors nested in it (args, ``reason``, cause), outermost first."""
    chain = [exc]
    while True:
        inner = chain[-1]
        nested = [arg for arg in inner.args if isinstance(arg, BaseException)]
        reason = getattr(inner, "reason", None)
        following = (
            nested[-1]
            if nested
            else reason
            if isinstance(reason, BaseException)
            else inner.__cause__ or inner.__context__
        )
        if following is None or any(following is seen for seen in chain):
            return chain
        chain.append(following)


def _never_connected(exc: BaseException) -> bool:
    """True when the connection never opened, so the server certainly saw no request."""
    unsent = (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError)
    return isinstance(exc, requests.ConnectTimeout) or any(
        isinstance(inner, unsent) for inner in _chain(exc)
    )


def _reason(exc: BaseException) -> str:
    """A short cause for a transport error: its innermost error, e.g. "Connection refused".

    requests and urllib3 nest errors three deep and repeat each one's repr in the next one's
    message; only the innermost says what happened, without URLs or object addresses.
    """
    inner = _chain(exc)[-1]
    if isinstance(inner, OSError) and inner.strerror:
        text = inner.strerror
    else:
        text = str(inner) or type(inner).__name__
        text = text.rsplit(": ", 1)[-1] if "object at 0x" in text else text
    return body_excerpt(text, limit=160) or type(exc).__name__


def _parse_json(response: requests.Response, *, job_id: str | None) -> dict[str, Any]:
    status = response.status_code
    text = response.text
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    message = message_from_body(body) or body_excerpt(text) or response.reason or "no details"
    if status in (401, 403):
        raise AuthenticationError(
            f"the API refused the key ({status}): {message}", status_code=status, job_id=job_id
        )
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        hint = f"; retry after {retry_after:g}s" if retry_after is not None else ""
        raise RateLimitError(
            f"rate limited by the API{hint}: {message}", retry_after=retry_after, job_id=job_id
        )
    if status in (400, 422):
        raise InvalidRequestError(
            f"the API rejected the request ({status}): {message}",
            status_code=status,
            job_id=job_id,
        )
    if status >= 300:
        raise APIError(f"the API answered {status}: {message}", status_code=status, job_id=job_id)
    if not isinstance(body, dict):
        raise APIError(
            f"the API answered {status} with a body that is not a JSON object: {message}",
            status_code=status,
            job_id=job_id,
        )
    if body.get("success") is False:
        raise APIError(f"the API reported failure: {message}", status_code=status, job_id=job_id)
    return body


def _final_status(exc: MiragicError, cancel: threading.Event | None) -> tuple[str, str | None]:
    """The history status (and message) for a wait that ended in ``exc``."""
    if isinstance(exc, JobFailedError):
        return FAILED, exc.server_message
    if isinstance(exc, JobTimeoutError):
        return (CANCELLED if cancel is not None and cancel.is_set() else TIMEOUT), None
    return ERROR, str(exc)


def _request_from_job(job: Job) -> GenerationRequest:
    """Rebuild the request from the parameters the server recorded (for resumed jobs)."""
    params = job.parameters
    prompt = params.get("prompt") or str(job.raw.get("prompt") or "") or "(unknown prompt)"

    def flag(name: str) -> bool | None:
        value = params.get(name, "").lower()
        return {"true": True, "false": False}.get(value)

    def number(name: str, default: int) -> int:
        value = params.get(name, "")
        return int(value) if value.isdigit() else default

    seed = params.get("seed", "")
    try:
        return GenerationRequest(
            prompt,
            model=params.get("model") or "flux",
            width=number("width", 1024),
            height=number("height", 1024),
            image_url=params.get("image_url") or None,
            seed=int(seed) if seed.isdigit() else None,
            enhance=flag("enhance"),
            safe=flag("safe"),
            private=flag("private"),
            nologo=flag("nologo"),
        )
    except InvalidRequestError:
        return GenerationRequest(prompt)
