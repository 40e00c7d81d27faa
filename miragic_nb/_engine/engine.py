"""The job engine: one job's whole life, written once, under every face.

A job goes ``queued → submitting → pending → downloading → completed``, or ends ``failed``,
``cancelled`` or ``timed_out`` (``JobState``). Each job is one ``JobHandle`` -- its request,
id, state, progress, result or error -- that a face subscribes to. The ``Engine`` drives the
handle through the client's API calls and does everything around them, here and nowhere else:

- **reuse**: a seeded request whose result the history already holds costs nothing;
- **recording**: the job id goes to the history the moment the create answer is read (with
  Ctrl-C deferred until it is written), then the result or how the job ended;
- **labelling**: results of the built-in emulator say so (``ResultInfo.emulator``);
- **cancellation**: checked under one lock before the create is sent, and between status
  reads and download retries (``JobHandle.cancel``);
- **deadlines**: a whole job runs under one ``context.deadline``;
- **workers**: ``Workers`` is the package's one thread policy: daemon threads behind a
  semaphore, which never hold interpreter exit (a ``ThreadPoolExecutor``'s are joined at exit,
  so a job stuck in a slow read would hold a kernel restart).

The magic blocks on handles (``JobHandle.wait``); the panel awaits them from asyncio
(``JobHandle.wait_async``); ``Client.generate`` runs one in the calling thread (``Engine.run``)
so Ctrl-C reaches it. A batch or an async face is more handles on the same engine.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from miragic_nb._core import config, context
from miragic_nb._core.errors import JobFailedError, JobTimeoutError, MiragicError, server_text
from miragic_nb._core.interrupts import deferred_interrupt
from miragic_nb._core.jobs import Job, check_job_id
from miragic_nb._core.request import GenerationRequest, random_seed
from miragic_nb._core.result_info import ResultInfo
from miragic_nb._core.states import JobState, store_status
from miragic_nb._core.urls import strip_userinfo
from miragic_nb._engine import budget
from miragic_nb._engine.port import APIPort

if TYPE_CHECKING:
    import asyncio

    from miragic_nb._core.images import GeneratedImage
    from miragic_nb._store.history import History

log = logging.getLogger("miragic_nb")

#: Jobs one ``Workers`` runs at the same time; more wait in line for a thread.
MAX_CONCURRENT_JOBS = 4
#: The built-in emulator's name in the history's reuse keys, whatever port it listens on.
BUILTIN_EMULATOR = "builtin-emulator:"

_T = TypeVar("_T")


class CancelledBeforeStart(MiragicError):
    """The job was cancelled before it was sent: nothing reached the server."""


Listener = Callable[["JobHandle"], None]


class Cancellation:
    """The cancel switch of one job, or of a group that stops together (a cell's jobs).

    Pulling it and a job's "may I send the create?" happen under one lock, so once it is
    pulled no job on it sends anything, and a cancel can say truthfully whether a credit may
    have been spent.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.lock = threading.Lock()

    def cancel(self) -> None:
        with self.lock:
            self.event.set()


class JobHandle:
    """One job: its request, id, state, progress, result or error, and its events.

    ``subscribe`` registers a listener called (from the thread doing the work) after every
    change; a face hands it on to its own thread. ``cancel`` stops the job at its next step.
    """

    def __init__(
        self,
        request: GenerationRequest | None,
        *,
        job_id: str | None = None,
        cancellation: Cancellation | None = None,
    ) -> None:
        self.request = request
        self.id = job_id
        self.state = JobState.QUEUED
        #: The server's percentage, when it reports one.
        self.progress: float | None = None
        #: The last status read.
        self.job: Job | None = None
        self.result: GeneratedImage | None = None
        self.error: BaseException | None = None
        #: The request gave no seed and the engine chose the one sent.
        self.seed_chosen = False
        self.cancellation = cancellation if cancellation is not None else Cancellation()
        self.future: concurrent.futures.Future[GeneratedImage] | None = None
        self._lock = threading.Lock()
        self._sent = False
        self._listeners: list[Listener] = []

    def __repr__(self) -> str:
        return f"<JobHandle {self.id or '(no id yet)'} {self.state.value}>"

    @property
    def is_active(self) -> bool:
        return not self.state.is_final

    @property
    def reused(self) -> bool:
        return self.result is not None and bool(self.result.metadata.get("reused"))

    @property
    def cancel_event(self) -> threading.Event:
        """Set once the job is cancelled: its waits and retries stop at the next step."""
        return self.cancellation.event

    @property
    def sent(self) -> bool:
        """True once the create request may have reached the server (a credit may be spent)."""
        return self._sent

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def cancel(self) -> bool:
        """Stop the job at its next step; True if the create request had already been sent.

        The handle is ``cancelled`` from now on, whatever the worker still finishes: a face
        shows what the user asked for (an id that arrives later is still kept).
        """
        with self.cancellation.lock:
            self.cancellation.event.set()
            sent = self._sent
        self.move(JobState.CANCELLED)
        return sent

    def begin_send(self) -> bool:
        """Just before the create request: False (and nothing sent) if already cancelled."""
        with self.cancellation.lock:
            if self.cancellation.event.is_set():
                return False
            self._sent = True
            return True

    def wait(self, timeout: float | None = None) -> GeneratedImage:
        """Block until the job (started on workers) has ended; its result or its error."""
        if self.future is None:
            raise RuntimeError("this job was not started on workers")
        return self.future.result(timeout)

    async def wait_async(self) -> GeneratedImage:
        """``wait`` for asyncio: the loop stays free while a worker runs the job."""
        import asyncio  # here: importing asyncio would slow %load_ext for every magic user

        if self.future is None:
            raise RuntimeError("this job was not started on workers")
        return await asyncio.wrap_future(self.future)

    def move(
        self,
        state: JobState,
        *,
        job: Job | None = None,
        result: GeneratedImage | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Record a step of the job and tell the listeners (a final state is never left, but a
        job id that arrives after it is still kept)."""
        with self._lock:
            if self.state.is_final:
                if self.id is not None or job is None:
                    return
                self.id = job.id
                self.job = job
            else:
                self.state = state
            if job is not None and self.job is not job:
                self.job = job
                self.id = self.id or job.id
                self.progress = job.progress
            if result is not None:
                self.result = result
                self.id = self.id or result.metadata.get("job_id")
            if error is not None:
                self.error = error
                self.id = self.id or getattr(error, "job_id", None)
        # A listener's error ends the job like any other failure (the engine records it).
        for listener in list(self._listeners):
            listener(self)


class Workers:
    """Runs work in daemon threads, at most ``max_workers`` at a time (see the module doc)."""

    def __init__(self, *, max_workers: int = MAX_CONCURRENT_JOBS) -> None:
        self._max_workers = max_workers
        self._slots = threading.BoundedSemaphore(max_workers)
        self._lock = threading.Lock()
        self._running: set[concurrent.futures.Future[Any]] = set()

    def __repr__(self) -> str:
        return f"Workers(max_workers={self._max_workers}, running={len(self._running)})"

    def submit(self, work: Callable[[], _T]) -> concurrent.futures.Future[_T]:
        """Run ``work`` in a daemon thread once a slot is free; a future cancelled before
        then never runs."""
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            with self._slots:
                if not future.set_running_or_notify_cancel():
                    return  # cancelled while waiting for a slot: never started
                try:
                    result = work()
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)

        with self._lock:
            self._running.add(future)
        future.add_done_callback(self._forget)
        threading.Thread(target=run, name="miragic-job", daemon=True).start()
        return future

    def shutdown(self) -> None:
        """Drop the work still waiting for a slot; running work ends on its cancel event."""
        with self._lock:
            waiting = list(self._running)
        for future in waiting:
            future.cancel()  # only succeeds for work that has not started

    async def settle(self) -> None:
        """Wait until no worker thread is running (e.g. after a cancel)."""
        import asyncio  # here: see wait_async

        while True:
            with self._lock:
                pending = [f for f in self._running if not f.done()]
            if not pending:
                return
            waiters = [asyncio.wrap_future(f) for f in pending]
            await asyncio.wait(waiters)
            for waiter in waiters:
                # Their errors were reported to the job's own awaiter; retrieving them keeps
                # asyncio from logging "never retrieved".
                if not waiter.cancelled():
                    waiter.exception()

    def _forget(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._running.discard(future)


class Engine:
    """Drives jobs through the API port's calls, with the history and the labelling.

    ``history`` None records nothing and reuses nothing; ``emulator`` labels every result as
    the built-in emulator's.
    """

    def __init__(
        self, api: APIPort, *, history: History | None = None, emulator: bool = False
    ) -> None:
        #: The API calls jobs go through (``APIPort``; ``MiragicAPI`` over HTTP).
        self.api = api
        self.history = history
        self.emulator = emulator
        self._workers: Workers | None = None
        self._lock = threading.Lock()

    @property
    def identity(self) -> str:
        """The server as the history's reuse knows it: its URL, or one name for the built-in
        emulator, whose port changes with every process (so its seeded results are reused
        across kernel restarts like any server's)."""
        return BUILTIN_EMULATOR if self.emulator else self.api.base_url

    def __repr__(self) -> str:
        return f"Engine({self.api!r}, history={self.history!r}, emulator={self.emulator})"

    # -- starting jobs -------------------------------------------------------------------------

    def start(
        self,
        handle: JobHandle,
        *,
        timeout: float | None = None,
        reuse: bool = True,
        workers: Workers | None = None,
    ) -> JobHandle:
        """Run ``handle``'s job on ``workers`` (default: the engine's own); returns at once.

        A handle with an id resumes that job (its request, if any, supplies the metadata).
        Subscribe to the handle before starting it to see every step.
        """
        pool = workers if workers is not None else self._default_workers()
        handle.future = pool.submit(lambda: self.run(handle, timeout=timeout, reuse=reuse))
        # A job dropped from the queue before it began never ran: say so on its handle.
        handle.future.add_done_callback(
            lambda future: handle.move(JobState.CANCELLED) if future.cancelled() else None
        )
        return handle

    def run(
        self, handle: JobHandle, *, timeout: float | None = None, reuse: bool = True
    ) -> GeneratedImage:
        """Drive ``handle`` to its end in this thread and return the image (or raise).

        Only ``MiragicError`` (and ``KeyboardInterrupt``) leaves: every error carries the job
        id once there is one, and the history says how the job ended.
        """
        started = time.monotonic()
        try:  # refused before anything is sent or recorded
            limit = self.api.timeout if timeout is None else config.check_timeout(timeout)
            handle.id = None if handle.id is None else check_job_id(handle.id)
        except MiragicError as exc:
            handle.move(JobState.FAILED, error=exc)
            raise
        deadline = started + limit
        if handle.id is None:
            if handle.request is None:
                raise ValueError("a job needs a request or an id")
            saved = self._reused(handle.request) if reuse else None
            if saved is not None:
                handle.move(JobState.COMPLETED, result=saved)
                return saved
            self._create(handle, deadline)
        try:
            image = self._finish(handle, started=started, deadline=deadline, limit=limit)
        except KeyboardInterrupt:
            handle.cancel()
            self._record_end(handle, JobState.CANCELLED, None)
            raise
        handle.move(JobState.COMPLETED, result=image)
        return image

    def submit(self, request: GenerationRequest, *, timeout: float | None = None) -> Job:
        """Create a job (one credit) and record its id; returns the ``PENDING`` job."""
        limit = self.api.timeout if timeout is None else config.check_timeout(timeout)
        handle = JobHandle(request)
        self._create(handle, time.monotonic() + limit)
        assert handle.job is not None
        return handle.job

    # -- the steps -----------------------------------------------------------------------------

    def _create(self, handle: JobHandle, deadline: float) -> None:
        request = handle.request
        assert request is not None
        # Under the handle's lock: once cancelled, no create is sent.
        # The session's budget counts every face's jobs: checked here, before each create.
        over = budget.refusal(self.history, emulator=self.emulator)
        if over is not None:
            handle.move(JobState.CANCELLED, error=over)
            raise over
        if request.seed is None:
            # The server does not say which seed it used: choose one, send it and show it, so
            # every picture can be made again. Chosen here, after the reuse check: an unseeded
            # request is never answered from the history.
            request = handle.request = replace(request, seed=random_seed())
            handle.seed_chosen = True
        if not handle.begin_send():
            error = CancelledBeforeStart("cancelled before the job was sent; no credit used")
            handle.move(JobState.CANCELLED, error=error)
            raise error
        handle.move(JobState.SUBMITTING)
        # A Ctrl-C while the create is on the wire waits until the id is recorded: otherwise it
        # would lose the id of a job already paid for.
        with deferred_interrupt(), context.deadline(deadline):
            try:
                job = self.api.create(request)
            except MiragicError as exc:
                handle.move(JobState.FAILED, error=exc)
                raise
            recorded = _without_userinfo(request)
            base_url, identity = self.api.base_url, self.identity
            self._record(
                lambda h: h.record_created(job.id, recorded, base_url=base_url, identity=identity)
            )
            self._record(lambda h: budget.spend(h, job.id, emulator=self.emulator))
        handle.move(JobState.PENDING, job=job)

    def _finish(
        self, handle: JobHandle, *, started: float, deadline: float, limit: float
    ) -> GeneratedImage:
        """Wait for the handle's job, download and decode its result, and record it."""
        assert handle.id is not None
        job_id = handle.id
        cancel = handle.cancel_event
        try:
            with context.deadline(deadline):
                done = self.api.wait(
                    handle.job or job_id,
                    timeout=limit,
                    on_progress=lambda job: handle.move(JobState.PENDING, job=job),
                    cancel=cancel,
                )
                handle.move(JobState.DOWNLOADING, job=done)
                data, done = self.api.download(done, cancel=cancel)
            image = self._image(
                data,
                done,
                handle.request,
                elapsed=time.monotonic() - started,
                seed_chosen=handle.seed_chosen,
            )
        except Exception as exc:
            error = _ended(exc, job_id, deadline=deadline, limit=limit)
            state = _final_state(error, cancelled=cancel.is_set())
            self._record_end(handle, state, error)
            handle.move(state, error=error)
            if error is exc:
                raise
            raise error from exc
        self._record(lambda h: h.record_result(image))
        return image

    def _image(
        self,
        data: bytes,
        job: Job,
        request: GenerationRequest | None,
        *,
        elapsed: float,
        seed_chosen: bool = False,
    ) -> GeneratedImage:
        from miragic_nb._core.images import GeneratedImage

        image = GeneratedImage.from_bytes(data, {}, max_pixels=self.api.max_pixels)
        info = ResultInfo.of_job(
            job,
            request,
            base_url=self.api.base_url,
            elapsed=elapsed,
            image_size=image.size,
            emulator=self.emulator,
            seed_chosen=seed_chosen,
        )
        image.info["miragic"] = info.as_dict()
        return image

    def _reused(self, request: GenerationRequest) -> GeneratedImage | None:
        """A saved result of exactly this request, labelled; None when there is none."""
        if self.history is None or request.seed is None:
            return None
        try:
            image = self.history.reuse(request, base_url=self.identity)
        except MiragicError as exc:  # an unreadable history must never stop a generation
            log.warning("could not look for a saved result: %s", exc)
            return None
        if image is None:
            return None
        log.info("reused job %s from history", image.metadata.get("job_id"))
        if self.emulator:
            image.info["miragic"]["emulator"] = True
        return image

    def _record_end(self, handle: JobHandle, state: JobState, error: BaseException | None) -> None:
        job_id = handle.id
        if job_id is None:
            return
        status = store_status(state, error)
        message: str | None = None
        if isinstance(error, JobFailedError):
            message = error.server_message
        elif state is JobState.FAILED and error is not None:
            message = str(error)
        self._record(lambda h: h.record_status(job_id, status, error_message=message))

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

    def _default_workers(self) -> Workers:
        with self._lock:
            if self._workers is None:
                self._workers = Workers()
            return self._workers


def _ended(exc: Exception, job_id: str, *, deadline: float, limit: float) -> MiragicError:
    """The error a job that failed with ``exc`` ends in, carrying its id.

    Only ``MiragicError`` leaves the engine: anything else (a server answer no reader foresaw)
    becomes one. A download cut off by the deadline is the job not finishing in time.
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
            f"it may still finish: client.resume({job_id!r}) picks it up",
            job_id=job_id,
        )
    error.job_id = error.job_id or job_id
    return error


def _final_state(error: MiragicError, *, cancelled: bool) -> JobState:
    if isinstance(error, JobFailedError):
        return JobState.FAILED
    if isinstance(error, JobTimeoutError):
        return JobState.CANCELLED if cancelled else JobState.TIMED_OUT
    return JobState.FAILED


def _without_userinfo(request: GenerationRequest) -> GenerationRequest:
    """The request as the history may keep it: no ``user:password@`` in its image URL."""
    if request.image_url is None:
        return request
    return replace(request, image_url=strip_userinfo(request.image_url))


def on_loop(loop: asyncio.AbstractEventLoop, listener: Listener) -> Listener:
    """``listener``, run on ``loop``'s thread instead of the worker's that reports a step.

    Widget updates belong on the kernel's own thread (output routing from threads broke in
    ipykernel 7.0 and came back in 7.1), so the panel hears its jobs through this.
    """

    def forward(handle: JobHandle) -> None:
        try:
            loop.call_soon_threadsafe(listener, handle)
        except RuntimeError:
            # The loop is closed (a script's asyncio.run ended): nobody is left to show it.
            log.debug("dropped an update for job %s: its event loop is closed", handle.id)

    return forward
