"""One runner for every group of jobs: a cell's, a panel Generate's, a batch's, ``agenerate``'s.

A ``Group`` holds its jobs (``Member``: a request or a job id to pick up, its ``JobHandle``,
and once it is over, its ``JobEnd``) and decides everything about running them together, here
and nowhere else:

- **concurrency**: a member is started only when the group's ``Gate`` has a slot (a fixed
  number of jobs at once, or a batch's adaptive ``Pacing``), on ``Workers``;
- **cancellation**: one ``Cancellation`` for the group, so once it is stopped no member sends
  a create; ``stop`` ends running jobs ``interrupted`` and the rest ``never_sent``, ``cancel``
  ends one job ``cancelled`` (by the user);
- **how each job ended**: a ``JobEnd`` in the one vocabulary (``JobState``: completed,
  failed, cancelled, never sent, interrupted, timed out), and the stop summary in the face's
  own words (``Face``: ``%miragic resume ID``, ``client.resume("ID")``, "rerun the same
  command");
- **the budget**: the credits a face reserved for the group (``reservation``, held in the
  store) go to each job's handle, and the engine spends each create's from them;
- **the input picture**: ``resolve_image_input`` resolves it once for every job.

Faces subscribe and render; they decide nothing. ``run`` blocks in the calling thread (the
magic, the CLI, ``generate_many``) and calls every subscriber on that thread; ``run_async`` is
the same on an asyncio loop (the panel, ``agenerate``). A Ctrl-C in ``run`` stops the group and
raises ``GroupInterrupted`` with the summary.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from miragic_nb._core.errors import APIError, JobFailedError, JobTimeoutError
from miragic_nb._core.states import JobState
from miragic_nb._engine.engine import (
    Cancellation,
    CancelledBeforeStart,
    Engine,
    JobHandle,
    Listener,
    Workers,
)

if TYPE_CHECKING:
    from miragic_nb._core.images import GeneratedImage
    from miragic_nb._core.request import GenerationRequest
    from miragic_nb._engine.budget import Reservation

#: Seconds between ticks while no job reports anything (a face keeps its elapsed time moving).
TICK_SECONDS = 0.25
#: After a stop, how long a create already on the wire may take to bring back its job id.
GRACE_SECONDS = 2.0


@dataclass(frozen=True)
class Face:
    """How one face tells the user to pick up a job, and where a lost id may be found."""

    #: The command that resumes job ``ID`` in this face.
    resume: Callable[[str], str]
    #: Where a job whose create answer never came may still be found.
    lost: str
    #: One instruction for every resumable job at once (the CLI: rerun), or None.
    rerun: str | None = None


MAGIC = Face(
    resume=lambda job_id: f"%miragic resume {job_id}",
    lost="`%miragic history` lists it if the server made it",
)
PYTHON = Face(
    resume=lambda job_id: f"client.resume({job_id!r})",
    lost="miragic_nb.history() lists it if the server made it",
)
#: ``generate_many``: the same call again resumes the whole batch.
PYTHON_BATCH = Face(
    resume=lambda job_id: f"client.resume({job_id!r})",
    lost="generate_many with the same items finds it if the server made it",
    rerun="Call generate_many again with the same items to resume: finished items are not "
    "made or paid for again.",
)
CLI = Face(
    resume=lambda job_id: "rerun the same command to resume it",
    lost="a rerun reports such an item as uncertain, and --retry-uncertain creates it again "
    "(which may pay twice)",
    rerun="Rerun the same command to resume: finished items are not made or paid for again.",
)


@dataclass(frozen=True)
class JobEnd:
    """How one job ended, in the one vocabulary (``JobState``), and what it cost."""

    state: JobState
    job_id: str | None = None
    error: BaseException | None = None
    #: The create may have reached the server: a credit may be spent.
    sent: bool = False
    result: GeneratedImage | None = field(default=None, repr=False)

    @property
    def is_failure(self) -> bool:
        return self.state.is_failure

    def detail(self, face: Face) -> str:
        """What to say after the state word, in ``face``'s words (empty for completed)."""
        state, job_id = self.state, self.job_id
        if state is JobState.COMPLETED:
            return ""
        if state is JobState.NEVER_SENT:
            return "no credit used"
        if state is JobState.CANCELLED:
            if not self.sent:
                return "before it was sent; no credit used"
            if job_id:
                return f"job {job_id} may still finish and use a credit: {face.resume(job_id)}"
            return f"while it was being sent; it may use a credit: {face.lost}"
        if state.resumable:
            if job_id:
                return f"still on the server: {face.resume(job_id)}"
            return f"while it was being sent; it may use a credit: {face.lost}"
        # failed: the reason, and the resume command when the job itself may have finished
        reason = _one_line(self.error)
        if job_id and self.error is not None and may_still_finish(self.error):
            reason += f"; it may still finish: {face.resume(job_id)}"
        return reason

    def text(self, face: Face) -> str:
        """``failed · reason``, ``never sent · no credit used``: one line for a row."""
        detail = self.detail(face)
        return f"{self.state.words} · {detail}" if detail else self.state.words


@dataclass
class Summary:
    """How every job of a group ended, and the lines a stop prints."""

    ends: list[JobEnd]

    def count(self, state: JobState) -> int:
        return sum(1 for end in self.ends if end.state is state)

    @property
    def resumable(self) -> list[str]:
        return [e.job_id for e in self.ends if e.state.resumable and e.job_id]

    @property
    def in_flight(self) -> int:
        """Jobs stopped while their create was on the wire: made or not, nobody knows yet."""
        return sum(1 for e in self.ends if e.state.resumable and not e.job_id and e.sent)

    def stop_lines(self, face: Face) -> list[str]:
        """After Ctrl-C: what exists, what was never sent, and how to pick it up."""
        parts = []
        if self.count(JobState.COMPLETED):
            parts.append(f"{self.count(JobState.COMPLETED)} completed")
        if self.resumable:
            parts.append(f"{len(self.resumable)} still on the server")
        if self.in_flight:
            parts.append(f"{self.in_flight} being sent")
        never = self.count(JobState.NEVER_SENT)
        if never:
            parts.append(f"{never} never sent (no credit used)")
        failed = self.count(JobState.FAILED)
        if failed:
            parts.append(f"{failed} failed")
        head = "Interrupted" + (": " + ", ".join(parts) if parts else "") + "."
        lines = [head]
        if self.resumable:
            if face.rerun is not None:
                lines.append(face.rerun)
            else:
                lines.append("They may still finish; pick them up with:")
                lines += [f"    {face.resume(job_id)}" for job_id in self.resumable]
        if self.in_flight:
            lines.append(f"{self.in_flight} create request(s) had not been answered; {face.lost}.")
        if not self.resumable and not self.in_flight and not any(e.sent for e in self.ends):
            lines.append("No job was created; no credit was spent.")
        return lines


class GroupInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a group: running jobs are ``interrupted``, the rest ``never_sent``."""

    def __init__(self, summary: Summary, face: Face) -> None:
        self.summary = summary
        self.lines = summary.stop_lines(face)
        #: What the face that ran the group made of it so far (a batch's partial result).
        self.result: Any = None
        super().__init__("\n".join(self.lines))


class Gate:
    """How many members run at once: ``enter`` takes a slot if one is free (never blocks)."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._used = 0
        self._lock = threading.Lock()

    def enter(self) -> bool:
        with self._lock:
            if self._used >= self.slots:
                return False
            self._used += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._used -= 1


class Member:
    """One job of a group: its request (or the id it resumes), its handle and how it ended."""

    def __init__(
        self, group: Group, index: int, request: GenerationRequest | None, job_id: str | None
    ) -> None:
        self.group = group
        self.index = index
        self.request = request
        self.job_id = job_id
        self.handle = JobHandle(request, job_id=job_id, cancellation=group.cancellation)
        self.future: concurrent.futures.Future[GeneratedImage] | None = None
        self.end: JobEnd | None = None
        self._started = False
        self._attach(self.handle)

    def __repr__(self) -> str:
        return f"<Member {self.index} {self.handle!r}>"

    @property
    def started(self) -> bool:
        return self._started

    def release(self) -> None:
        """Forget the member's image once a face has taken it (a batch streamed to disk
        holds no image in memory); how it ended stays."""
        if self.end is not None:
            self.end = replace(self.end, result=None)
        self.handle.result = None
        if self.future is not None and self.future.done():
            self.future = None

    def new_handle(self, *, job_id: str | None = None) -> JobHandle:
        """A fresh handle for another try of this member's job (a batch after a 429)."""
        self.handle = JobHandle(self.request, job_id=job_id, cancellation=self.group.cancellation)
        self._attach(self.handle)
        if self.group.stopped is not None:
            self.handle.cancel(interrupt=self.group.stopped is JobState.INTERRUPTED)
        return self.handle

    def _attach(self, handle: JobHandle) -> None:
        # The engine spends a created job's credit from the group's reservation, if any.
        handle.reservation = self.group.reservation
        for listener in self.group._handle_listeners:
            handle.subscribe(listener)
        handle.subscribe(lambda _: self.group._post(self))


#: What a member's worker does: drive the member's job and return its image (or raise).
Work = Callable[[Member], "GeneratedImage"]


class Group:
    """Jobs run together on one engine (see the module doc)."""

    def __init__(
        self,
        engine: Engine,
        *,
        concurrency: int | None = None,
        gate: Gate | None = None,
        workers: Workers | None = None,
        timeout: float | None = None,
        reuse: bool = True,
        face: Face = PYTHON,
        work: Work | None = None,
        grace: float = GRACE_SECONDS,
    ) -> None:
        self.engine = engine
        self.timeout = timeout
        self.reuse = reuse
        self.face = face
        self.grace = grace
        self.cancellation = Cancellation()
        self.members: list[Member] = []
        #: How the group was stopped (``interrupted`` or ``cancelled``), None while it runs.
        self.stopped: JobState | None = None
        #: Credits held in the store for the group's creates (a cell's, a batch's): the
        #: engine spends each job's from it instead of reserving its own.
        self.reservation: Reservation | None = None
        self._concurrency = concurrency
        self._gate = gate
        self._workers = workers
        self._work = work
        self._subscribers: list[Callable[[Member], None]] = []
        self._handle_listeners: list[Listener] = []
        self._post_event: Callable[[Member], None] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        ended = sum(1 for m in self.members if m.end is not None)
        return f"<Group {ended}/{len(self.members)} ended, stopped={self.stopped}>"

    # -- building the group ----------------------------------------------------------------

    def add(self, request: GenerationRequest | None, *, job_id: str | None = None) -> Member:
        """A job to create from ``request``, or (``job_id``) an existing one to pick up."""
        if request is None and job_id is None:
            raise ValueError("a job needs a request or an id")
        member = Member(self, len(self.members), request, job_id)
        self.members.append(member)
        return member

    def subscribe(self, subscriber: Callable[[Member], None]) -> None:
        """Call ``subscriber(member)`` after every step of a member's job and once when it
        ends (``member.end`` set), on the thread running ``run`` (or the asyncio loop)."""
        self._subscribers.append(subscriber)

    def on_handles(self, listener: Listener) -> None:
        """Call ``listener`` on every handle's steps from the worker doing them (a ledger)."""
        self._handle_listeners.append(listener)
        for member in self.members:
            member.handle.subscribe(listener)

    def resolve_image_input(self, value: object, resolve: Callable[[object], str | None]) -> None:
        """Resolve the group's input picture once for every job (one status read or one
        upload, with the client's ``resolve_image_url``), before anything is started."""
        url = resolve(value)
        for member in self.members:
            if member.request is not None and not member.started:
                member.request = replace(member.request, image_url=url)
                member.handle.request = member.request

    # -- stopping --------------------------------------------------------------------------

    def stop(self, *, interrupt: bool = True) -> None:
        """Stop every job: no member sends a create from now on; running ones stop polling.

        ``interrupt`` (Ctrl-C, a batch stopped): jobs already sent end ``interrupted``, the
        others ``never_sent``; otherwise (the user's Cancel) every job ends ``cancelled``.
        """
        with self._lock:
            if self.stopped is None:
                self.stopped = JobState.INTERRUPTED if interrupt else JobState.CANCELLED
        self.cancellation.cancel()  # first, for every job at once
        for member in list(self.members):
            if member.handle.is_active:
                member.handle.cancel(interrupt=interrupt)
            self._post(member)

    def cancel(self, member: Member) -> bool:
        """The user cancels one job; True if its create had been sent (a credit may go)."""
        sent = member.handle.cancel()
        self._post(member)
        return sent

    # -- running ---------------------------------------------------------------------------

    def run(
        self, *, on_tick: Callable[[], None] | None = None, tick: float = TICK_SECONDS
    ) -> Summary:
        """Run every member to its end in worker threads; subscribers are called here.

        A ``KeyboardInterrupt`` stops the group, gives creates on the wire ``grace`` seconds
        to bring back their ids, and raises ``GroupInterrupted`` with the summary.
        """
        events: queue.SimpleQueue[Member] = queue.SimpleQueue()
        self._post_event = events.put
        try:
            self._feed()
            while not self._all_ended():
                try:
                    member = events.get(timeout=tick)
                except queue.Empty:
                    if on_tick is not None:
                        on_tick()
                    self._feed()
                    continue
                self._handle_event(member)
        except KeyboardInterrupt as interrupt:
            self.stop(interrupt=True)
            with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C: stop waiting
                self._settle(events)
            self._end_the_rest()
            stop = GroupInterrupted(self.summary(), self.face)
            raise stop from interrupt
        finally:
            # However the run ends, no worker keeps polling and no further job starts.
            if not self._all_ended():
                self.stop(interrupt=True)
                self._end_the_rest()
        return self.summary()

    async def run_async(self) -> Summary:
        """``run`` on an asyncio loop: subscribers are called on the loop's thread.

        Cancelling the task stops the group (``cancelled``) without waiting for workers.
        """
        import asyncio  # here: importing asyncio would slow %load_ext for every magic user

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Member] = asyncio.Queue()

        def post(member: Member) -> None:
            # RuntimeError: the loop is closed (a script's asyncio.run ended); nobody listens.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(events.put_nowait, member)

        self._post_event = post
        try:
            self._feed()
            while not self._all_ended():
                self._handle_event(await events.get())
        except asyncio.CancelledError:
            self.stop(interrupt=False)
            self._end_the_rest()
            raise
        return self.summary()

    def summary(self) -> Summary:
        return Summary([m.end for m in self.members if m.end is not None])

    # -- inside ----------------------------------------------------------------------------

    def _post(self, member: Member) -> None:
        post = self._post_event
        if post is not None:
            post(member)

    def _feed(self) -> None:
        """Start waiting members while the gate has room (and the group is not stopped)."""
        gate = self._gate_now()
        for member in self.members:
            if self.stopped is not None:
                return
            if member.started:
                continue
            if not gate.enter():
                return
            self._start(member, gate)

    def _gate_now(self) -> Gate:
        if self._gate is None:
            self._gate = Gate(self._concurrency or max(len(self.members), 1))
        return self._gate

    def _workers_now(self) -> Workers:
        if self._workers is None:
            gate = self._gate_now()
            self._workers = Workers(max_workers=max(1, min(gate.slots, len(self.members))))
        return self._workers

    def _start(self, member: Member, gate: Gate) -> None:
        work = self._work or self._default_work

        def job() -> GeneratedImage:
            try:
                return work(member)
            finally:
                gate.leave()

        member._started = True
        member.handle.reservation = self.reservation  # set once the face has reserved
        member.future = self._workers_now().submit(job)
        member.future.add_done_callback(lambda _: self._post(member))

    def _default_work(self, member: Member) -> GeneratedImage:
        return self.engine.run(member.handle, timeout=self.timeout, reuse=self.reuse)

    def _handle_event(self, member: Member) -> None:
        if member.end is not None:
            return
        future = member.future
        if future is not None and future.done():
            member.end = _end_of(member, future)
            self._feed()
        elif not member.started and self.stopped is not None:
            member.end = _unsent(member, self.stopped)
        for subscriber in list(self._subscribers):
            subscriber(member)

    def _all_ended(self) -> bool:
        return all(member.end is not None for member in self.members)

    def _settle(self, events: queue.SimpleQueue[Member]) -> None:
        """After a stop: let running workers end (their waits stop at once; a create on the
        wire may take up to ``grace`` to bring back its id), showing each end."""
        deadline = time.monotonic() + self.grace
        while not self._all_ended():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                self._handle_event(events.get(timeout=min(left, TICK_SECONDS)))
            except queue.Empty:
                continue

    def _end_the_rest(self) -> None:
        """Members whose workers are still busy (or never started) end as they stand now."""
        stopped = self.stopped or JobState.INTERRUPTED
        for member in self.members:
            if member.end is not None:
                continue
            future = member.future
            if future is not None and future.done():
                member.end = _end_of(member, future)
            elif not member.started:
                member.end = _unsent(member, stopped)
            else:
                handle = member.handle
                member.end = JobEnd(
                    handle.state if handle.state.is_final else stopped,
                    job_id=handle.id,
                    sent=handle.sent,
                )
            for subscriber in list(self._subscribers):
                subscriber(member)

    def running(self) -> list[Member]:
        """Members started and not yet ended."""
        return [m for m in self.members if m.started and m.end is None]


def _unsent(member: Member, stopped: JobState) -> JobEnd:
    state = JobState.CANCELLED if stopped is JobState.CANCELLED else JobState.NEVER_SENT
    if member.job_id is not None:  # a job to pick up exists whatever happens
        state = JobState.CANCELLED if stopped is JobState.CANCELLED else JobState.INTERRUPTED
        return JobEnd(state, job_id=member.job_id, sent=True)
    return JobEnd(state)


def _end_of(member: Member, future: concurrent.futures.Future[GeneratedImage]) -> JobEnd:
    """How a member whose worker is done ended."""
    handle = member.handle
    if future.cancelled():
        return _unsent(member, member.group.stopped or JobState.INTERRUPTED)
    error = future.exception()
    if error is None:
        return JobEnd(
            JobState.COMPLETED, job_id=handle.id, sent=handle.sent, result=future.result()
        )
    job_id = handle.id or getattr(error, "job_id", None)
    state = handle.state
    if state in (JobState.CANCELLED, JobState.INTERRUPTED, JobState.NEVER_SENT):
        pass
    elif isinstance(error, CancelledBeforeStart):
        state = JobState.NEVER_SENT
    elif isinstance(error, JobTimeoutError) and not isinstance(error, JobFailedError):
        state = JobState.TIMED_OUT
    else:
        state = JobState.FAILED
    return JobEnd(state, job_id=job_id, error=error, sent=handle.sent)


def may_still_finish(error: BaseException) -> bool:
    """Whether a job that ended in ``error`` may still finish on the server: not when the
    server said it failed, nor when it does not know the job (404)."""
    if isinstance(error, JobFailedError):
        return False
    return not (isinstance(error, APIError) and error.status_code == 404)


def _one_line(exc: BaseException | None) -> str:
    if isinstance(exc, JobTimeoutError) and exc.job_id:
        return f"job {exc.job_id} did not finish in time"
    text = " ".join(str(exc).split()) if exc is not None else ""
    return text or (type(exc).__name__ if exc is not None else "no reason given")


__all__ = [
    "CLI",
    "GRACE_SECONDS",
    "MAGIC",
    "PYTHON",
    "PYTHON_BATCH",
    "Face",
    "Gate",
    "Group",
    "GroupInterrupted",
    "JobEnd",
    "Member",
    "Summary",
    "may_still_finish",
]
