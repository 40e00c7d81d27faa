"""Run a blocking ``Client.run`` without blocking the event loop, with callbacks on the loop.

The panel must never freeze the kernel, and every widget update must happen on the kernel's
own thread (output routing from threads broke in ipykernel 7.0 and came back in 7.1). So a job runs
as ``Client.run`` -- the same create / poll (``PollSchedule``) / download path the magic uses,
history included -- in a worker thread, while an asyncio task on the caller's loop awaits it.
The ``on_created`` and ``on_progress`` callbacks are handed back to that loop with
``call_soon_threadsafe``, so the caller's code only ever runs on the loop's thread.

Cancelling sets the ``threading.Event`` that ``Client.wait`` sleeps on, so polling stops at
once (a status read already on the wire still completes); a job still queued for a worker
never starts, and so never costs a credit.

``JobRunner.submit`` is the one worker policy of the package (daemon threads behind a
semaphore): the blocking ``%%miragic`` magic runs its jobs through it too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .client import Client
    from .images import GeneratedImage
    from .jobs import Job
    from .request import GenerationRequest

log = logging.getLogger("miragic_nb")

#: Jobs one runner polls at the same time; more wait in line for a worker.
MAX_CONCURRENT_JOBS = 4

_T = TypeVar("_T")


class CancelledBeforeStart(Exception):
    """The job was cancelled before it was sent: nothing reached the server."""


class Cancellation:
    """The cancel switch of one job, which also knows whether the job had been sent.

    ``event`` is what ``Client.wait`` sleeps on. Setting it and checking "was it sent?" happen
    under one lock, so a cancel can say truthfully whether a credit may have been spent.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self._lock = threading.Lock()
        self._sent = False

    def cancel(self) -> bool:
        """Pull the switch; returns True if the create request had already been sent."""
        with self._lock:
            self.event.set()
            return self._sent

    @property
    def is_cancelled(self) -> bool:
        return self.event.is_set()

    def begin_send(self) -> bool:
        """Called by the worker just before the create request: False if already cancelled."""
        with self._lock:
            if self.event.is_set():
                return False
            self._sent = True
            return True


class JobRunner:
    """Runs ``Client.run`` calls in worker threads for coroutines on an event loop."""

    def __init__(self, *, max_workers: int = MAX_CONCURRENT_JOBS) -> None:
        self._max_workers = max_workers
        self._slots = threading.BoundedSemaphore(max_workers)
        self._lock = threading.Lock()
        self._workers: set[concurrent.futures.Future[Any]] = set()

    def __repr__(self) -> str:
        return f"JobRunner(max_workers={self._max_workers}, running={len(self._workers)})"

    async def run(
        self,
        client: Client,
        request: GenerationRequest,
        *,
        cancel: Cancellation,
        on_created: Callable[[Job], None] | None = None,
        on_progress: Callable[[Job], None] | None = None,
    ) -> GeneratedImage:
        """Create, poll and download one job; the callbacks run on the awaiting loop's thread.

        Raises the client's errors, or ``CancelledBeforeStart`` when ``cancel`` was pulled
        before the job was sent. Cancelling the awaiting task also unqueues a job not yet started.
        """
        loop = asyncio.get_running_loop()
        created = _on_loop(loop, on_created)
        progressed = _on_loop(loop, on_progress)

        def work() -> GeneratedImage:
            if not cancel.begin_send():
                raise CancelledBeforeStart("cancelled before the job was sent")
            return client.run(
                request, on_created=created, on_progress=progressed, cancel=cancel.event
            )

        worker = self.submit(work)
        return await asyncio.wrap_future(worker)

    async def settle(self) -> None:
        """Wait until no worker thread is running (e.g. after a cancel, before asserting)."""
        while True:
            with self._lock:
                pending = [w for w in self._workers if not w.done()]
            if not pending:
                return
            waiters = [asyncio.wrap_future(w) for w in pending]
            await asyncio.wait(waiters)
            for waiter in waiters:
                # Their errors were reported by ``run``'s awaiter (or belong to a cancelled
                # job); retrieving them keeps asyncio from logging "never retrieved".
                if not waiter.cancelled():
                    waiter.exception()

    @property
    def busy(self) -> bool:
        with self._lock:
            return any(not w.done() for w in self._workers)

    def shutdown(self) -> None:
        """Drop the jobs still waiting for a slot; running ones end on their cancel event."""
        with self._lock:
            waiting = list(self._workers)
        for worker in waiting:
            worker.cancel()  # only succeeds for a job that has not started

    def submit(self, work: Callable[[], _T]) -> concurrent.futures.Future[_T]:
        """Run ``work`` in a daemon thread once one of ``max_workers`` slots is free.

        Not a ``ThreadPoolExecutor``: its workers are joined at interpreter exit, so a job
        still polling, or stuck in a slow read, would hold a kernel restart (or the end of a
        papermill run) until the server lets go. A daemon thread does not. The panel and the
        magic both run their jobs here.
        """
        worker: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            with self._slots:
                if not worker.set_running_or_notify_cancel():
                    return  # cancelled while waiting for a slot: never started
                try:
                    result = work()
                except BaseException as exc:
                    worker.set_exception(exc)
                else:
                    worker.set_result(result)

        with self._lock:
            self._workers.add(worker)
        worker.add_done_callback(self._forget)
        threading.Thread(target=run, name="miragic-job", daemon=True).start()
        return worker

    def _forget(self, worker: concurrent.futures.Future[_T]) -> None:
        with self._lock:
            self._workers.discard(worker)


def _on_loop(
    loop: asyncio.AbstractEventLoop, callback: Callable[[Job], None] | None
) -> Callable[[Job], None] | None:
    """Wrap ``callback`` so a call from a worker thread runs it on ``loop``'s thread instead."""
    if callback is None:
        return None

    def forward(job: Job) -> None:
        try:
            loop.call_soon_threadsafe(callback, job)
        except RuntimeError:
            # The loop is closed (a script's asyncio.run ended): nobody is left to show it.
            log.debug("dropped an update for job %s: its event loop is closed", job.id)

    return forward
