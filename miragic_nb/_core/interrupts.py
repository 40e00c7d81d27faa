"""Hold a Ctrl-C back while a paid-for job id is between the server and the history.

A ``KeyboardInterrupt`` raised while the create answer is being read, parsed or written to the
history loses the id of a job the user pays for. ``deferred_interrupt`` lets such a step finish:
a first Ctrl-C is noted (with one line on stderr saying why nothing happens yet) and raised as
soon as the step ends; a second Ctrl-C abandons the step at once. The step bounds itself (the
create request has its own timeouts), so the wait is never longer than that.

Python runs signal handlers only in the main thread, and only the main thread may install
them: off the main thread this does nothing (a worker is stopped by its cancel event instead).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType

WAITING_NOTICE = (
    "Waiting for the server's answer so the job id is not lost; press Ctrl-C again to abandon it"
)

_Handler = Callable[[int, FrameType | None], object]


@contextlib.contextmanager
def deferred_interrupt(notice: str = WAITING_NOTICE) -> Iterator[None]:
    """Run the block with SIGINT deferred to its end (main thread only; see the module doc)."""
    previous = _installed_handler()
    if previous is None:
        yield
        return
    presses = 0

    def defer(signum: int, frame: FrameType | None) -> None:
        nonlocal presses
        presses += 1
        if presses == 1:
            _say(notice)
        else:  # the second Ctrl-C: the user gives up on the answer
            previous(signum, frame)

    signal.signal(signal.SIGINT, defer)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if presses == 1:
            # Now do what the Ctrl-C would have done (Python's and IPython's handler raise
            # KeyboardInterrupt), also when the block failed: the user asked to stop.
            previous(signal.SIGINT, None)


def _installed_handler() -> _Handler | None:
    """The current Python SIGINT handler, or None when deferring is impossible or unwanted."""
    if threading.current_thread() is not threading.main_thread():
        return None
    handler = signal.getsignal(signal.SIGINT)
    # SIG_IGN: Ctrl-C is ignored anyway; SIG_DFL or None: not handled by Python, so a deferred
    # interrupt could not be replayed the way it would have acted.
    return handler if callable(handler) else None


def _say(notice: str) -> None:
    # stderr closed, or interrupted in the middle of its own write: the wait goes on silently.
    with contextlib.suppress(OSError, RuntimeError, ValueError):
        print(notice, file=sys.stderr, flush=True)
