"""A batch's progress: one bar of items done, failed and running, credits and elapsed time.

The same detection as a single job's view (``progress.make_progress``): the widget in a
notebook, a text line in a terminal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING

from miragic_nb._core.states import JobState
from miragic_nb._views.progress import JobProgress, make_progress

if TYPE_CHECKING:
    from miragic_nb._engine.batch import BatchCounts, Plan

CountsListener = Callable[["BatchCounts"], None]


def label(counts: BatchCounts) -> str:
    return (
        f"{counts.done + counts.failed}/{counts.total} · {counts.done} done · "
        f"{counts.failed} failed · {counts.running} running · {counts.credits} credits"
    )


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
    view: JobProgress = make_progress(f"0/{plan.items}", stream=stream, widgets=widgets)
    view.set_state(JobState.PENDING, percent=0.0)
    view.show()
    last: list[BatchCounts] = []

    def show(counts: BatchCounts) -> None:
        last[:] = [counts]
        finished = counts.done + counts.failed
        view.set_label(label(counts))
        view.set_state(JobState.PENDING, percent=100.0 * finished / max(counts.total, 1))
        if on_progress is not None:
            on_progress(counts)

    try:
        yield show
    except BaseException as exc:
        view.fail(f"stopped: {type(exc).__name__}")
        raise
    if last and last[0].failed:
        view.fail(f"{last[0].failed} failed · {view.elapsed:.1f}s")
    else:
        view.succeed(f"{view.elapsed:.1f}s")
