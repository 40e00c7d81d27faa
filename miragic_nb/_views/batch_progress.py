"""A batch's progress: one bar of items finished, failed and running, jobs created, elapsed time.

The same detection as a single job's view (``progress.make_progress``): the widget in a
notebook, a text line in a terminal (redrawn in place, its time moving, on a terminal; a line
per change in a log).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING

from miragic_nb._views.progress import JobProgress, TextProgress, WidgetProgress, make_progress

if TYPE_CHECKING:
    from miragic_nb._engine.batch import BatchCounts, Plan

CountsListener = Callable[["BatchCounts"], None]

#: Seconds between redraws while no item changes (the elapsed time keeps moving).
TICK_S = 0.5


def label(counts: BatchCounts) -> str:
    """``batch 3/10``: items finished of all."""
    return f"batch {counts.done + counts.failed}/{counts.total}"


def note(counts: BatchCounts) -> str:
    """The counts after the elapsed time. Jobs are counted as created, not as credits spent:
    a running job has not been charged for yet, and may never be."""
    parts = [f"{counts.done} completed"]
    if counts.failed:
        parts.append(f"{counts.failed} failed")
    if counts.running:
        parts.append(f"{counts.running} in progress")
    parts.append(f"{counts.credits} created")
    return " · ".join(parts)


@contextmanager
def batch_progress(
    plan: Plan,
    on_progress: CountsListener | None = None,
    *,
    stream: IO[str] | None = None,
    widgets: bool | None = None,
) -> Iterator[CountsListener]:
    """Show a bar for the block; yields the listener the batch feeds its counts to (it also
    calls ``on_progress``, the caller's own)."""
    view: JobProgress = make_progress(f"batch 0/{plan.items}", stream=stream, widgets=widgets)
    view.set_state("running", percent=0.0)
    view.show()
    last: list[BatchCounts] = []

    def show(counts: BatchCounts) -> None:
        last[:] = [counts]
        finished = counts.done + counts.failed
        view.set_label(label(counts))
        view.set_note(note(counts))
        view.set_state("running", percent=100.0 * finished / max(counts.total, 1))
        if on_progress is not None:
            on_progress(counts)

    stop = threading.Event()
    ticker = None
    if isinstance(view, WidgetProgress) or (isinstance(view, TextProgress) and view.rewrites):
        # Without a terminal a tick would print nothing new: only live views tick.
        ticker = threading.Thread(target=_tick, args=(view, stop), daemon=True)
        ticker.start()
    try:
        yield show
    except KeyboardInterrupt:
        view.stop("interrupted", f"{view.elapsed:.1f}s")  # a stop, not a failure
        raise
    except BaseException as exc:
        _stop(stop, ticker)
        if isinstance(exc, KeyboardInterrupt):
            view.end("interrupted", _ending(last, view))
        else:
            view.fail(f"stopped: {type(exc).__name__} · {_ending(last, view)}")
        raise
    _stop(stop, ticker)
    if last and last[0].failed:
        view.fail(_ending(last, view))
    else:
        view.succeed(_ending(last, view))


def _ending(last: list[BatchCounts], view: JobProgress) -> str:
    counts = f"{note(last[0])} · " if last else ""
    return f"{counts}{view.elapsed:.1f}s"


def _tick(view: JobProgress, stop: threading.Event) -> None:
    while not stop.wait(TICK_S):
        view.refresh()


def _stop(stop: threading.Event, ticker: threading.Thread | None) -> None:
    stop.set()
    if ticker is not None:
        ticker.join()
