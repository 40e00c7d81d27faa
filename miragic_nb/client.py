"""``Client``: the plain-Python face of miragic-nb, a thin facade over the engine and the API.

The API calls (``create``, ``get_job``, ``wait``, ``download``) live in ``_api.miragic``; the
engine (``_engine``) runs jobs through them and records each in the history. ``generate``,
``submit``, ``resume``, ``generate_many`` and ``agenerate`` start jobs on the engine, which
reuses saved results, records every job and keeps a whole generation under one deadline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from miragic_nb._api.miragic import MAX_DOWNLOAD_BYTES, MiragicAPI, ProgressCallback
from miragic_nb._core import config
from miragic_nb._core.images import MAX_PIXELS, GeneratedImage
from miragic_nb._core.jobs import Job, check_job_id
from miragic_nb._core.request import GenerationRequest, RequestOptions, request_from
from miragic_nb._core.states import JobState
from miragic_nb._engine.engine import Engine, JobHandle, Workers
from miragic_nb._engine.image_inputs import PLACEHOLDER_URL, Uploader, resolve_image_url

if TYPE_CHECKING:
    import requests
    from typing_extensions import Unpack

    from miragic_nb._core.polling import DurationLearner, PollSchedule
    from miragic_nb._engine.batch import BatchCounts, BatchResult, Plan
    from miragic_nb._store.history import History

#: ``agenerate`` calls of one client that run at once; more wait for a worker.
MAX_ASYNC_JOBS = 32


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

    ``emulator=True`` marks a client of the built-in emulator (the session makes those): its
    results are labelled placeholders, and its jobs cost no credits.

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
        emulator: bool = False,
    ) -> None:
        # Rebind the argument first: a traceback that captures locals (IPython's verbose mode,
        # capture_locals=True) then shows only the Secret, whatever fails below.
        api_key = config.as_secret(api_key)
        #: The API calls (the engine's port), over one HTTP session.
        self.api = MiragicAPI(
            api_key,
            base_url,
            timeout=timeout,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            poll_schedule=poll_schedule,
            max_download_bytes=max_download_bytes,
            max_pixels=max_pixels,
            durations=durations,
            session=session,
        )
        #: Puts local input pictures where the API can fetch them; None: ``set_uploader``'s.
        self.uploader = uploader
        #: Runs this client's jobs: reuse, the history, deadlines, cancellation.
        self.engine = Engine(self.api, history=_history(history), emulator=emulator)
        self._async_pool: Workers | None = None
        self._async_lock = threading.Lock()

    def __repr__(self) -> str:
        # getattr: a traceback may show a client whose __init__ raised half-way.
        api = getattr(self, "api", None)
        key = "set" if api is not None and api.has_api_key else "not set"
        return f"Client(base_url={getattr(api, 'base_url', None)!r}, api_key={key})"

    @property
    def base_url(self) -> str:
        """The API's origin; the key is sent there and nowhere else."""
        return self.api.base_url

    @property
    def timeout(self) -> float:
        """Seconds a whole job may take by default (create, wait and download)."""
        return self.api.timeout

    @property
    def has_api_key(self) -> bool:
        return self.api.has_api_key

    @property
    def history(self) -> History | None:
        """Where job ids and results are recorded (``MIRAGIC_HOME`` / platform dir by
        default; ``history=False``: nowhere)."""
        return self.engine.history

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self.api.close()

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
        request = self._prepare(prompt, options)
        limit = self.timeout if timeout is None else config.check_timeout(timeout)
        handle = JobHandle(request)
        if on_progress is not None:
            handle.subscribe(_reporting(on_progress))
        return self.engine.run(handle, timeout=limit, reuse=reuse)

    def submit(self, prompt: str | GenerationRequest, **options: Unpack[RequestOptions]) -> Job:
        """Start one generation (costs a credit), record its id, return the ``PENDING`` job."""
        return self.engine.submit(self._prepare(prompt, options))

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
        limit = self.timeout if timeout is None else config.check_timeout(timeout)
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

    def _prepare(
        self, prompt: str | GenerationRequest, options: RequestOptions
    ) -> GenerationRequest:
        """``request_from``, with the ``image_url`` option resolved to the URL to send."""
        given = options.get("image_url")
        if isinstance(prompt, str) and given is not None:
            checked: RequestOptions = {**options, "image_url": PLACEHOLDER_URL}
            request_from(prompt, checked)
            options = {**options, "image_url": self.resolve_image_url(given)}
        return request_from(prompt, options)

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
            self.engine,
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
        request = self._prepare(prompt, options)
        limit = self.timeout if timeout is None else config.check_timeout(timeout)
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

    # -- the API calls, low level (nothing recorded) ---------------------------------------

    def create(self, request: GenerationRequest) -> Job:
        """Send an already validated request to the create endpoint, exactly once.

        Low level: nothing is recorded; ``submit`` records the id.
        """
        return self.api.create(request)

    def get_job(self, job_id: str) -> Job:
        """Read a job's current status."""
        return self.api.get_job(job_id)

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
        ``timeout`` seconds (the job id is in both). Transient faults while polling are
        retried until the deadline. ``cancel``, when set, stops polling at the next step.
        """
        return self.api.wait(job_or_id, timeout=timeout, on_progress=on_progress, cancel=cancel)

    def download(self, job: Job, *, cancel: threading.Event | None = None) -> tuple[bytes, Job]:
        """Fetch a completed job's image bytes; returns them with the job they came from.

        A 403/404 on the result URL (signed URLs expire) re-reads the job once for a fresh URL.
        """
        return self.api.download(job, cancel=cancel)

    def result_url_refused(self, url: str) -> bool:
        """True when the result host answers ``url`` with 403, 404 or 410 (expired or gone)."""
        return self.api.result_url_refused(url)


def _history(history: History | bool) -> History | None:
    if history is True:
        from miragic_nb._store.history import History

        return History()
    return history or None


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
