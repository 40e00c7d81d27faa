"""The Miragic API client: the API calls, and the faces of the job engine for plain Python.

The API calls are ``create`` (one ``POST``), ``get_job`` and ``wait`` (status reads, timed by
``polling.py``) and ``download`` (the result's bytes). Every failure becomes one typed error
(``errors.py``); the session, its retries, the deadlines and size caps live in
``transport.py``. Status reads and downloads retry connection errors, read errors, 429 and
502/503/504; the create ``POST`` retries only what certainly created no job (a connection that
never opened, a 429).

``generate``, ``submit`` and ``resume`` run jobs through the client's ``Engine``
(``engine.py``), which reuses saved results, records every job in the history and keeps a whole
generation under one deadline (``timeout``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from miragic_nb._api import transport
from miragic_nb._core import config
from miragic_nb._core.errors import (
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
from miragic_nb._core.images import MAX_PIXELS, GeneratedImage
from miragic_nb._core.jobs import Job, check_job_id, job_id_of
from miragic_nb._core.polling import (
    DurationLearner,
    PollSchedule,
    RecentSubmissions,
    Submission,
)
from miragic_nb._core.request import GenerationRequest, RequestOptions
from miragic_nb._core.result_info import whole_number
from miragic_nb._engine.engine import Engine, JobHandle, JobState, Workers, check_timeout
from miragic_nb._engine.image_inputs import PLACEHOLDER_URL, Uploader, resolve_image_url

if TYPE_CHECKING:
    import requests
    from typing_extensions import Unpack

    from miragic_nb._engine.batch import BatchCounts, BatchResult, Plan
    from miragic_nb._store.history import History

log = logging.getLogger("miragic_nb")

CREATE_PATH = "/api/v1/image/generate"
JOB_PATH = "/api/v1/image/jobs/"
#: Largest result body accepted; a 2048×2048 JPEG is a few MB.
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
#: Answers of a result host for a file that has expired or is gone.
GONE_STATUSES = (403, 404, 410)
#: ``agenerate`` calls of one client that run at once; more wait for a worker.
MAX_ASYNC_JOBS = 32
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
    ``https://backend.miragic.ai``. The key is sent only to the base URL's origin, also with
    your own ``session`` (a ``requests.Session``: its adapters serve other origins, ours serve
    the API, and a redirect away from the API's origin drops the key).

    Jobs (each new job costs a credit; every job is recorded in ``history``):

    - ``generate(prompt, **options) -> GeneratedImage``: create, wait, download, decode. With
      a ``seed``, a saved result of the very same request is returned for free
      (``reuse=False`` forces a new job).
    - ``submit(prompt, **options) -> Job``: create the job and return at once.
    - ``get_job(job_id) -> Job``: one status read.
    - ``wait(job_or_id, *, timeout, on_progress) -> Job``: poll until it is ``COMPLETED``.
    - ``resume(job_or_id) -> GeneratedImage``: wait for an existing job and fetch its image,
      from this kernel or another one (no new job).
    - ``generate_many(items, ...) -> BatchResult``: many jobs, paced to the service's rate
      limits, resumable after a crash, with a dry run and a credit budget.
    - ``await agenerate(prompt, **options) -> GeneratedImage``: ``generate`` for asyncio.

    ``image_url`` (``kontext``) may be a URL, a result (``GeneratedImage``), a ``Job`` or job
    id, or a local file, ``bytes`` or PIL image; the last three go through ``uploader``
    (``(data, mimetype) -> https URL``, default: ``miragic_nb.set_uploader``'s), see
    ``docs/image-inputs.md``.

    ``prompt`` may also be a ready ``GenerationRequest``. Low level, without the history:
    ``create(request) -> Job`` (the one ``POST``) and ``download(job) -> (bytes, Job)``.
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
        session: requests.Session | None = None,
        uploader: Uploader | None = None,
    ) -> None:
        # Rebind the argument first: a traceback that captures locals (IPython's verbose mode,
        # capture_locals=True) then shows only the Secret, whatever fails below.
        api_key = _as_secret(api_key)
        self._api_key = api_key
        self.base_url = config.base_url_from_env(base_url)
        self.timeout = check_timeout(timeout)
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
        #: Puts local input pictures where the API can fetch them; None: ``set_uploader``'s.
        self.uploader = uploader
        #: Runs this client's jobs: reuse, the history, deadlines, cancellation.
        self.engine = Engine(self, history=_history(history))
        self._async_pool: Workers | None = None
        self._async_lock = threading.Lock()

    def __repr__(self) -> str:
        # getattr: a traceback may show a client whose __init__ raised half-way.
        key = "set" if getattr(self, "_api_key", None) else "not set"
        return f"Client(base_url={getattr(self, 'base_url', None)!r}, api_key={key})"

    @property
    def has_api_key(self) -> bool:
        return self._api_key is not None

    @property
    def history(self) -> History | None:
        """Where job ids and results are recorded (``MIRAGIC_HOME`` / platform dir by
        default; ``history=False``: nowhere)."""
        return self.engine.history

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- jobs --------------------------------------------------------------------------------

    def generate(
        self,
        prompt: str | GenerationRequest,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        reuse: bool = True,
        **options: Unpack[RequestOptions],
    ) -> GeneratedImage:
        """Create a job, wait for it, download and decode the image.

        ``options``: ``model`` ("flux"), ``width``/``height`` (1024), ``image_url``, ``seed``,
        ``enhance``, ``safe``, ``private``, ``nologo``. The result is a ``PIL.Image.Image``
        (``GeneratedImage``) whose ``info["miragic"]`` says how it was made and whose
        ``original_bytes`` are the server's own. ``on_progress`` sees each status read.
        """
        request = self._request(prompt, options)
        limit = self.timeout if timeout is None else check_timeout(timeout)
        handle = JobHandle(request)
        if on_progress is not None:
            handle.subscribe(_reporting(on_progress))
        return self.engine.run(handle, timeout=limit, reuse=reuse)

    def submit(self, prompt: str | GenerationRequest, **options: Unpack[RequestOptions]) -> Job:
        """Start one generation (costs a credit), record its id, return the ``PENDING`` job."""
        return self.engine.submit(self._request(prompt, options))

    def resume(
        self,
        job_or_id: Job | str,
        *,
        request: GenerationRequest | None = None,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> GeneratedImage:
        """Wait for an existing job and return its image (no new job is created).

        ``request`` supplies the metadata; without it, the server's recorded parameters do.
        ``timeout`` covers the download too.
        """
        limit = self.timeout if timeout is None else check_timeout(timeout)
        job_id = job_or_id.id if isinstance(job_or_id, Job) else check_job_id(job_or_id)
        handle = JobHandle(request, job_id=job_id)
        if isinstance(job_or_id, Job):
            handle.job = job_or_id
        if on_progress is not None:
            handle.subscribe(_reporting(on_progress))
        return self.engine.run(handle, timeout=limit)

    def resolve_image_url(self, value: object) -> str | None:
        """The URL to send as ``image_url`` for ``value`` (a URL, result, job, job id, file,
        bytes or PIL image): a status read for a job's fresh result URL, ``uploader`` for a
        local picture (once). Raises ``InvalidRequestError`` before uploading anything."""
        return resolve_image_url(value, jobs=self, uploader=self.uploader)

    def _request(
        self, prompt: str | GenerationRequest, options: RequestOptions
    ) -> GenerationRequest:
        """``_request``, with the ``image_url`` option resolved to the URL to send."""
        given = options.get("image_url")
        if isinstance(prompt, str) and given is not None:
            checked: RequestOptions = {**options, "image_url": PLACEHOLDER_URL}
            _request(prompt, checked)
            options = {**options, "image_url": self.resolve_image_url(given)}
        return _request(prompt, options)

    def generate_many(
        self,
        items: Sequence[str | Mapping[str, Any]],
        *,
        concurrency: int | str = "auto",
        max_credits: int | None = None,
        dry_run: bool = False,
        fresh: bool = False,
        timeout: float | None = None,
        on_progress: Callable[[BatchCounts], None] | None = None,
        name: str | None = None,
        retry_uncertain: bool = False,
    ) -> BatchResult | Plan:
        """Generate many images; a rerun of the same batch resumes it (see ``docs/batches.md``).

        ``items`` are prompts or dicts of ``generate`` options, all validated before anything
        is sent. Returns a ``BatchResult`` aligned with ``items`` (None where an item failed;
        ``.errors`` says why), or with ``dry_run`` the ``Plan`` and nothing sent.
        ``max_credits`` refuses (``BudgetExceededError``) a plan creating more jobs.
        ``concurrency``: ``"auto"`` adapts to the service's rate limits; a number caps it.
        """
        from miragic_nb._engine.batch import Batch, check_budget
        from miragic_nb._engine.budget import check_session, session_limit
        from miragic_nb._views.batch_progress import batch_progress

        batch = Batch(
            self,
            items,
            name=name,
            concurrency=concurrency,
            timeout=timeout,
            retry_uncertain=retry_uncertain,
        )
        plan = batch.plan(fresh=fresh)
        if dry_run:
            return plan
        check_budget(plan, max_credits)
        check_session(batch.history, planned=plan.credits, max_credits=session_limit())
        with batch_progress(plan, on_progress) as show:
            return batch.run(plan, on_change=show)

    async def agenerate(
        self,
        prompt: str | GenerationRequest,
        *,
        timeout: float | None = None,
        reuse: bool = True,
        **options: Unpack[RequestOptions],
    ) -> GeneratedImage:
        """``generate`` for asyncio: ``await client.agenerate(prompt, **options)``.

        The job runs on the engine's workers, so many of them (``asyncio.gather``) run at
        once. Cancelling the task stops polling at once; the job id stays in the history,
        marked cancelled, and ``client.resume(job_id)`` picks it up.
        """
        request = self._request(prompt, options)
        limit = self.timeout if timeout is None else check_timeout(timeout)
        handle = self.engine.start(
            JobHandle(request), timeout=limit, reuse=reuse, workers=self._async_workers()
        )
        import asyncio  # here: importing asyncio would slow %load_ext for every magic user

        try:
            return await handle.wait_async()
        except asyncio.CancelledError:
            handle.cancel()
            raise

    def _async_workers(self) -> Workers:
        """The pool ``agenerate`` runs on: wide, so gathered calls are not queued behind the
        engine's default four."""
        with self._async_lock:
            if self._async_pool is None:
                self._async_pool = Workers(max_workers=MAX_ASYNC_JOBS)
            return self._async_pool

    # -- the API calls -------------------------------------------------------------------------

    def create(self, request: GenerationRequest) -> Job:
        """Send an already validated request to the create endpoint, exactly once.

        Low level: nothing is recorded; ``submit`` records the id.
        """
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
        limit = self.timeout if timeout is None else check_timeout(timeout)
        deadline = time.monotonic() + min(limit, transport.time_left())
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
            with self._session.head(
                url, timeout=transport.timeouts(*self._timing.as_tuple()), allow_redirects=True
            ) as response:
                return response.status_code in GONE_STATUSES
        except requests.RequestException as exc:
            log.info("could not check result URL %s (%s)", transport.strip_userinfo(url), exc)
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
                    transport.sleep(pause)
                elif cancel.wait(min(pause, transport.time_left())):
                    raise  # cancelled (Ctrl-C, Cancel): no further request
        raise AssertionError("unreachable")

    # -- plumbing --------------------------------------------------------------------------

    def _require_key(self) -> None:
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


def _history(history: History | bool) -> History | None:
    if history is True:
        from miragic_nb._store.history import History

        return History()
    return history or None


def _request(prompt: str | GenerationRequest, options: RequestOptions) -> GenerationRequest:
    """The request ``prompt`` and ``options`` describe, validated before anything is sent."""
    if isinstance(prompt, GenerationRequest):
        if options:
            raise InvalidRequestError(
                f"options ({', '.join(sorted(options))}) cannot be combined with a ready "
                "GenerationRequest; put them in the request",
                field=next(iter(sorted(options))),
            )
        return prompt
    allowed = GenerationRequest.__dataclass_fields__.keys() - {"prompt"}
    unknown = sorted(options.keys() - allowed)
    if unknown:
        raise InvalidRequestError(
            f"unknown option {unknown[0]!r}; the options are {', '.join(sorted(allowed))}, "
            "timeout, on_progress and reuse",
            field=unknown[0],
        )
    # image_url is a URL by now (Client._request resolved what the user held); anything else
    # is refused by GenerationRequest's own check.
    return GenerationRequest(prompt, **options)  # type: ignore[arg-type]


def _reporting(on_progress: ProgressCallback) -> Callable[[JobHandle], None]:
    """A handle listener that calls ``on_progress`` with each status read (not with the
    create answer, which moves the job from ``submitting`` to ``pending``)."""
    last: list[Any] = [None, None]  # the state and the job seen last

    def listener(handle: JobHandle) -> None:
        job, (state, seen) = handle.job, last
        last[:] = [handle.state, job]
        read = handle.state is JobState.PENDING and job is not None and job is not seen
        if read and state is not JobState.SUBMITTING:
            assert job is not None
            on_progress(job)

    return listener


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
