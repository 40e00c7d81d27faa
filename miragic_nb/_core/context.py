"""The call context: the deadline a whole job runs under, and who paces creates.

Both are context variables, so they follow a job into the threads and tasks that run it
(``contextvars.copy_context``) and never leak between jobs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

#: The monotonic moment the current request (and any wait inside it) must be over by.
_deadline: ContextVar[float] = ContextVar("miragic_deadline", default=math.inf)


@contextmanager
def deadline(moment: float) -> Iterator[float]:
    """Run the block under ``moment`` (monotonic), or under an outer deadline if that is nearer."""
    effective = min(moment, _deadline.get())
    token = _deadline.set(effective)
    try:
        yield effective
    finally:
        _deadline.reset(token)


def time_left() -> float:
    """Seconds until the current deadline (``inf`` outside any)."""
    return _deadline.get() - time.monotonic()


def sleep(seconds: float) -> None:
    """Sleep, but never past the current deadline."""
    pause = min(seconds, time_left())
    if pause > 0:
        time.sleep(pause)


#: True while the caller (a batch) paces creates itself: create 429s come straight back.
_caller_paces_creates: ContextVar[bool] = ContextVar("miragic_caller_paces", default=False)


@contextmanager
def caller_paces_creates() -> Iterator[None]:
    """Inside the block a create answered 429 is not retried by urllib3 but raised at once
    (``RateLimitError``), so a batch's controller sees every 429 and slows down itself."""
    token = _caller_paces_creates.set(True)
    try:
        yield
    finally:
        _caller_paces_creates.reset(token)


def caller_paces() -> bool:
    """True inside ``caller_paces_creates``."""
    return _caller_paces_creates.get()
