"""Many images at once (``Client.generate_many``): durable, resumable, paced and budgeted.

Every item is validated before anything is sent. The batch is then planned against the store
(``batch_store.py``): each item either has a completed job (its saved image is returned), a job
still open (picked up by id), a create whose answer was lost (*uncertain*), or nothing yet
(created). Items run on the client's ``Engine``, paced by ``pacing.Pacing``; one failed item
never stops the others.

**Uncertain items.** A create whose answer never arrived (the process was killed while it was
on the wire, or the connection broke after the request went out) may have made a job, and
cost a credit. A rerun neither repays nor skips them silently: first it looks in the history
for a job of that very request created since the intent (the engine records ids before the
batch links them) and adopts it; what is still unknown is listed in ``result.uncertain``, left
``None`` with an explaining error, and never created again unless asked
(``retry_uncertain=True``, which may pay twice). There are at most ``concurrency`` of them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, overload

from miragic_nb._core import config, context
from miragic_nb._core.errors import (
    AuthenticationError,
    BudgetExceededError,
    InvalidRequestError,
    MiragicError,
    RateLimitError,
    UncertainJobError,
)
from miragic_nb._core.request import MAX_SEED, GenerationRequest, request_from
from miragic_nb._core.states import COMPLETED, FAILED, JobState
from miragic_nb._engine.engine import CancelledBeforeStart, Engine, JobHandle, Workers
from miragic_nb._engine.pacing import Pacing, check_concurrency
from miragic_nb._store.batches import BatchStore, ItemRecord
from miragic_nb._store.history import _load

if TYPE_CHECKING:
    from miragic_nb._core.images import GeneratedImage

#: Create errors that certainly made no job: the intent is withdrawn.
_NO_JOB_MADE = (RateLimitError, InvalidRequestError, AuthenticationError, CancelledBeforeStart)

Item = str | Mapping[str, Any]
#: Called with (index, image or None, error or None) as each item ends.
ItemSink = Callable[[int, "GeneratedImage | None", "MiragicError | None"], None]


@dataclass(frozen=True)
class Plan:
    """What running a batch would do: item indexes by what happens to them, and its cost."""

    items: int
    from_store: tuple[int, ...]
    to_resume: tuple[int, ...]
    to_create: tuple[int, ...]
    uncertain: tuple[int, ...]
    batch_key: str
    #: Planned as a fresh start: running it forgets the batch's earlier jobs first.
    fresh: bool = False

    @property
    def credits(self) -> int:
        """Credits the batch may spend: one per job to create (a seeded item whose result
        the history holds may still come free)."""
        return len(self.to_create)

    def summary(self) -> str:
        text = (
            f"{self.items} items: {len(self.from_store)} from the store, "
            f"{len(self.to_resume)} to resume, {len(self.to_create)} to create "
            f"({self.credits} credits)"
        )
        if self.uncertain:
            text += f", {len(self.uncertain)} uncertain (a create whose answer was lost)"
        return text

    def __repr__(self) -> str:
        return f"<Plan {self.summary()}>"


@dataclass
class BatchResult(Sequence["GeneratedImage | None"]):
    """The images, aligned with the items (None where an item failed), and the counts."""

    images: list[GeneratedImage | None]
    plan: Plan
    #: Item index → why it has no image.
    errors: dict[int, MiragicError] = field(default_factory=dict)
    created: int = 0
    #: Items whose result came from the store (an earlier run, or a saved seeded result).
    reused: int = 0
    #: Items whose existing job was picked up by id.
    resumed: int = 0
    #: Items whose create may have made a job nobody knows the id of.
    uncertain: list[int] = field(default_factory=list)
    #: Creates answered 429 (never counted as failures; they made no job).
    rate_limited: int = 0

    @overload
    def __getitem__(self, index: int) -> GeneratedImage | None: ...
    @overload
    def __getitem__(self, index: slice) -> list[GeneratedImage | None]: ...
    def __getitem__(self, index: int | slice) -> Any:
        return self.images[index]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def failed(self) -> int:
        return len(self.errors)

    def __repr__(self) -> str:
        done = len(self.images) - len(self.errors)
        return (
            f"<BatchResult {done}/{len(self.images)} images, {self.failed} failed, "
            f"created={self.created} reused={self.reused} resumed={self.resumed}"
            + (f" uncertain={self.uncertain}" if self.uncertain else "")
            + ">"
        )


def requests_of(items: Sequence[Item]) -> list[GenerationRequest]:
    """Every item as a validated request; the first bad one is refused, naming its index."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise InvalidRequestError(
            "items must be a list of prompts (str) or of dicts of generate() options",
            field="items",
        )
    requests: list[GenerationRequest] = []
    for index, item in enumerate(items):
        try:
            if isinstance(item, str):
                requests.append(request_from(item, {}))
            elif isinstance(item, Mapping):
                options = dict(item)
                if "prompt" not in options:
                    raise InvalidRequestError("it has no 'prompt'", field="prompt")
                # request_from checks every name and value: the dict is only typed loosely here.
                prompt = options.pop("prompt")
                requests.append(request_from(prompt, options))  # type: ignore[arg-type]
            else:
                raise InvalidRequestError(
                    f"a {type(item).__name__} is neither a prompt (str) nor a dict of options",
                    field="items",
                )
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"item {index}: {exc.message}", field=exc.field) from None
    return requests


def item_seed(batch: str, index: int) -> int:
    """The seed of an unseeded item: random-looking, and the same for the same batch and place."""
    digest = hashlib.sha256(f"{batch}\n{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (MAX_SEED + 1)


def batch_key(requests: Sequence[GenerationRequest], *, base_url: str, name: str | None) -> str:
    """What identifies a batch: its ``name``, else its requests and server."""
    if name is not None:
        if not isinstance(name, str) or not name.strip():
            raise InvalidRequestError("name must be a non-empty string", field="name")
        return "name:" + name.strip()
    described = json.dumps([base_url, [request.describe() for request in requests]], sort_keys=True)
    return "items:" + hashlib.sha256(described.encode()).hexdigest()


class Batch:
    """One batch on one engine: plan it, then run it."""

    def __init__(
        self,
        engine: Engine,
        items: Sequence[Item],
        *,
        name: str | None = None,
        concurrency: int | str = "auto",
        timeout: float | None = None,
        retry_uncertain: bool = False,
    ) -> None:
        self.engine = engine
        self.requests = requests_of(items)
        self.fixed_concurrency = check_concurrency(concurrency)
        self.timeout = None if timeout is None else config.check_timeout(timeout)
        self.retry_uncertain = retry_uncertain
        history = engine.history
        if history is None:
            raise InvalidRequestError(
                "generate_many needs the history to survive a crash: use a client with "
                "history (the default)",
                field="history",
            )
        self.history = history
        self.store = BatchStore(history)
        self.key = batch_key(self.requests, base_url=engine.api.base_url, name=name)
        # An item without a seed gets one made from the batch and its place in it: sent and
        # shown like any chosen seed, and the same on every rerun, so a job created just
        # before a crash is still found by its request (``BatchStore.adopt``).
        self._seed_chosen = {i for i, request in enumerate(self.requests) if request.seed is None}
        self.requests = [
            replace(request, seed=item_seed(self.key, i)) if i in self._seed_chosen else request
            for i, request in enumerate(self.requests)
        ]
        self._records: dict[int, ItemRecord] = {}
        self._stop = threading.Event()
        self._deadline = math.inf
        self._lock = threading.Lock()
        #: The items' handles while they run, to stop them at once with the batch.
        self._handles: weakref.WeakSet[JobHandle] = weakref.WeakSet()

    # -- planning ----------------------------------------------------------------------------

    def plan(self, *, fresh: bool = False) -> Plan:
        """Where each item stands in the store; sends nothing (``fresh``: as if never run)."""
        self._records = {} if fresh else self.store.items(self.key)
        from_store: list[int] = []
        to_resume: list[int] = []
        to_create: list[int] = []
        uncertain: list[int] = []
        for index, request in enumerate(self.requests):
            record = self._records.get(index)
            if record is not None and record.job_id is None:
                identity = self.engine.identity
                adopted = self.store.adopt(self.key, record, request, base_url=identity)
                if adopted is not None:
                    record = self._records[index] = ItemRecord(index, adopted, record.intent_at)
            if record is None:
                to_create.append(index)
            elif record.job_id is None:
                (to_create if self.retry_uncertain else uncertain).append(index)
            else:
                status = self._status(record.job_id)
                if status == COMPLETED:
                    from_store.append(index)
                elif status == FAILED:
                    to_create.append(index)  # the server gave up on it: a new job is a new try
                else:
                    to_resume.append(index)
        return Plan(
            items=len(self.requests),
            from_store=tuple(from_store),
            to_resume=tuple(to_resume),
            to_create=tuple(to_create),
            uncertain=tuple(uncertain),
            batch_key=self.key,
            fresh=fresh,
        )

    def _status(self, job_id: str) -> str | None:
        record = self.history.get(job_id)
        if record is None:
            return None
        if record.status == COMPLETED and record.path is None:
            return None  # completed, but its image was never saved: fetch it again
        return record.status

    # -- running -----------------------------------------------------------------------------

    def run(
        self,
        plan: Plan,
        *,
        keep_images: bool = True,
        on_item: ItemSink | None = None,
        on_change: Callable[[BatchCounts], None] | None = None,
    ) -> BatchResult:
        """Run what ``plan`` says; every item ends with an image or an error in the result.

        ``keep_images`` False holds no image after ``on_item`` has seen it (a CLI writes each
        to disk). ``on_change`` sees the counts after every step (for a progress view).
        """
        if plan.fresh:
            self.store.forget(self.key)
        result = BatchResult([None] * plan.items, plan)
        counts = BatchCounts(total=plan.items)
        pacing = Pacing(self.fixed_concurrency)
        # The batch's timeout bounds the whole batch: no create starts after it, no job runs
        # past it.
        self._deadline = math.inf if self.timeout is None else time.monotonic() + self.timeout

        def finish(index: int, image: GeneratedImage | None, error: MiragicError | None) -> None:
            with self._lock:
                if error is not None:
                    result.errors[index] = error
                    counts.failed += 1
                else:
                    counts.done += 1
                    if keep_images:
                        result.images[index] = image
                counts.credits = result.created
                counts.rate_limited = pacing.rate_limited
                counts.running = pacing.running
            if on_item is not None:
                on_item(index, image, error)
            if on_change is not None:
                on_change(counts)

        for index in plan.uncertain:
            result.uncertain.append(index)
            finish(index, None, _uncertain(index))
        unreadable = []  # saved images gone or damaged: fetched again by job id
        for index in plan.from_store:
            job_id = self._records[index].job_id
            saved = None if job_id is None else self._saved(job_id)
            if saved is None:
                unreadable.append(index)
            else:
                result.reused += 1
                finish(index, saved, None)
        work = [(index, self._records[index].job_id) for index in (*plan.to_resume, *unreadable)]
        work += [(index, None) for index in plan.to_create]
        workers = Workers(max_workers=pacing.ceiling)
        futures = []
        try:
            for index, job_id in work:
                if not pacing.acquire(self._stop):
                    break
                item = functools.partial(self._item, index, job_id, pacing, result, finish)
                futures.append(workers.submit(item))
            for future in futures:
                future.result()
        except BaseException:  # Ctrl-C: no further create; running jobs stop polling
            self.cancel()
            workers.shutdown()
            raise
        for index, _ in work[len(futures) :]:  # stopped before their turn: nothing was sent
            finish(index, None, _not_started(index))
        result.rate_limited = pacing.rate_limited
        return result

    def cancel(self) -> None:
        """Stop: no further create, running jobs stop polling (their ids stay recorded, and a
        rerun picks them up)."""
        self._stop.set()
        for handle in list(self._handles):
            if handle.is_active:
                handle.cancel()

    def _saved(self, job_id: str) -> GeneratedImage | None:
        record = self.history.get(job_id)
        return None if record is None else _load(record)

    def _item(
        self,
        index: int,
        job_id: str | None,
        pacing: Pacing,
        result: BatchResult,
        finish: ItemSink,
    ) -> None:
        """Run one item to its end (in a worker thread): pick up ``job_id``, or create a job."""
        try:
            image, error = self._drive(index, job_id, pacing, result)
        finally:
            pacing.release()
        finish(index, image, error)

    def _drive(
        self, index: int, job_id: str | None, pacing: Pacing, result: BatchResult
    ) -> tuple[GeneratedImage | None, MiragicError | None]:
        request = self.requests[index]
        engine = self.engine
        with context.caller_paces_creates():
            if job_id is not None:
                handle = JobHandle(request, job_id=job_id)
                handle.seed_chosen = index in self._seed_chosen
                self._follow(handle)
                try:
                    image = engine.run(handle, timeout=self._time_left())
                except MiragicError as exc:
                    return None, exc
                with self._lock:
                    result.resumed += 1
                return image, None
            while not self._stop.is_set():
                sent_at = pacing.before_create(self._stop, until=self._deadline)
                if sent_at is None:
                    break
                handle = JobHandle(request)
                handle.seed_chosen = index in self._seed_chosen
                self._follow(handle, index=index, pacing=pacing, result=result)
                # A seed the batch chose is never answered from the history (a new run of
                # unseeded prompts makes new pictures); nor is anything in a fresh start.
                reuse = not (result.plan.fresh or handle.seed_chosen)
                try:
                    image = engine.run(handle, timeout=self._time_left(), reuse=reuse)
                except RateLimitError as exc:
                    if handle.id is not None:
                        return None, exc
                    pacing.throttled(exc.retry_after, sent_at=sent_at)
                    self.store.withdraw(self.key, index)
                    continue  # no job was made: not a failure of the item
                except MiragicError as exc:
                    if handle.id is None:
                        if isinstance(exc, _NO_JOB_MADE):
                            self.store.withdraw(self.key, index)
                        else:
                            with self._lock:
                                result.uncertain.append(index)
                    return None, exc
                if handle.reused:
                    with self._lock:
                        result.reused += 1
                return image, None
        if not self._stop.is_set():
            return None, _unsent(index, self.timeout)
        return None, _not_started(index)

    def _time_left(self) -> float | None:
        """Seconds until the batch's deadline (None: no timeout; the client's per job)."""
        if self.timeout is None:
            return None
        return max(0.001, self._deadline - time.monotonic())

    def _follow(
        self,
        handle: JobHandle,
        *,
        index: int | None = None,
        pacing: Pacing | None = None,
        result: BatchResult | None = None,
    ) -> None:
        """Cancel the handle with the batch; record an item's create intent and job id."""
        stop = self._stop
        linked = False
        self._handles.add(handle)

        def listener(handle: JobHandle) -> None:
            nonlocal linked
            if stop.is_set() and handle.is_active:
                handle.cancel_event.set()
            if index is None:
                return
            if handle.state is JobState.SUBMITTING:
                # Synced before the create is sent (the engine calls this first).
                self.store.intend(self.key, index)
            elif handle.id is not None and not linked and handle.sent:
                linked = True
                self.store.link(self.key, index, handle.id, spent=False)  # the engine counted it
                if result is not None:
                    with self._lock:
                        result.created += 1
                if pacing is not None:
                    pacing.created()

        handle.subscribe(listener)
        if stop.is_set():
            handle.cancel()


@dataclass
class BatchCounts:
    """What a progress view shows: items done, failed and running, credits, 429s."""

    total: int
    done: int = 0
    failed: int = 0
    running: int = 0
    credits: int = 0
    rate_limited: int = 0
    started: float = field(default_factory=time.monotonic)

    def text(self) -> str:
        elapsed = time.monotonic() - self.started
        return (
            f"{self.done + self.failed}/{self.total} · {self.done} done · {self.failed} failed "
            f"· {self.running} running · {self.credits} credits · {elapsed:.1f}s"
        )


def _not_started(index: int) -> CancelledBeforeStart:
    return CancelledBeforeStart(f"item {index}: the batch was stopped before it was sent")


def _unsent(index: int, timeout: float | None) -> CancelledBeforeStart:
    return CancelledBeforeStart(
        f"item {index}: not sent: the batch's timeout ({timeout:g}s) ran out before the "
        "service's rate limit let its create through"
    )


def _uncertain(index: int) -> UncertainJobError:
    return UncertainJobError(
        f"item {index}: its create was sent but the answer was lost, so a job may exist (and "
        "be paid for) that the store has no id of; it was not created again. Check your "
        "account, then rerun with retry_uncertain=True to create it anew"
    )


def check_budget(plan: Plan, max_credits: int | None) -> None:
    """Refuse, before any request, a plan that would create more jobs than ``max_credits``."""
    if max_credits is None:
        return
    if isinstance(max_credits, bool) or not isinstance(max_credits, int) or max_credits < 0:
        raise InvalidRequestError(
            f"max_credits must be a whole number ≥ 0, got {max_credits!r}", field="max_credits"
        )
    if plan.credits > max_credits:
        raise BudgetExceededError(
            f"this batch would create {plan.credits} jobs ({plan.credits} credits) but "
            f"max_credits is {max_credits}; nothing was sent ({plan.summary()})",
            needed=plan.credits,
            allowed=max_credits,
        )
