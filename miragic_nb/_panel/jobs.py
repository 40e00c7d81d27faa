"""The panel's job rows: each press of Generate as a progress row over the engine's handle.

The engine (``engine.py``) runs the job; this module only shows it: a ``PanelJob`` pairs the
engine's ``JobHandle`` with its progress row and Cancel button, and ``JobRows`` lists the running
rows and the last few finished ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from miragic_nb._core.states import JobState
from miragic_nb._engine.engine import JobHandle
from miragic_nb._panel.style import excerpt
from miragic_nb._views.progress import JobProgress, WidgetProgress, make_progress

if TYPE_CHECKING:
    from miragic_nb._core.images import GeneratedImage
    from miragic_nb._core.request import GenerationRequest

#: Seconds between redraws of a running job's elapsed time.
TICK_S = 1.0
#: Finished progress rows kept on screen (running ones always stay).
FINISHED_ROWS_SHOWN = 4


@dataclass(eq=False)
class PanelJob:
    """One press of Generate as the panel shows it: its progress row over the engine's handle.

    ``state`` is the handle's ``JobState``: ``queued`` → ``submitting`` → ``pending`` →
    ``downloading`` → ``completed``, or ``failed`` / ``cancelled`` / ``timed_out``. A cancelled
    or failed job keeps its ``job_id`` (when the server gave one), so ``%miragic resume
    <job_id>`` can still fetch a result that was paid for.
    """

    handle: JobHandle
    progress: JobProgress
    message: str = ""
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    row: Any = field(default=None, repr=False)
    cancel_button: Any = field(default=None, repr=False)

    @classmethod
    def with_row(
        cls, request: GenerationRequest, on_cancel: Callable[[PanelJob], None]
    ) -> PanelJob:
        """A job for ``request`` with its progress row, whose Cancel calls ``on_cancel``."""
        progress = make_progress(excerpt(request.prompt, 28), widgets=True)
        assert isinstance(progress, WidgetProgress)  # ipywidgets is imported above
        job = cls(handle=JobHandle(request), progress=progress)
        job.cancel_button = widgets.Button(
            description="Cancel",
            tooltip="Stop polling this job",
            layout=widgets.Layout(width="auto"),
        )
        job.cancel_button.on_click(lambda _: on_cancel(job))
        job.row = widgets.HBox([progress.widget, job.cancel_button])
        return job

    @property
    def request(self) -> GenerationRequest:
        assert self.handle.request is not None
        return self.handle.request

    @property
    def state(self) -> JobState:
        return self.handle.state

    @property
    def job_id(self) -> str | None:
        return self.handle.id

    @property
    def image(self) -> GeneratedImage | None:
        return self.handle.result

    @property
    def is_active(self) -> bool:
        return self.handle.is_active

    def cancel(self) -> None:
        """Stop polling; ``message`` then says what that means for the user's credit."""
        was_sent = self.handle.cancel()
        if self.job_id:
            self.message = cancel_message(self.job_id)
        elif was_sent:
            self.message = (
                "Cancelled while the job was being created; its id will show here if the "
                "server made it (it may then still finish and use a credit)."
            )
        else:
            self.message = "Cancelled before anything was sent; no credit used."
        self.progress.fail("cancelled")
        if self.task is not None:
            self.task.cancel()

    async def tick(self) -> None:
        """Keep the elapsed seconds moving between status reads (which may be seconds apart)."""
        while self.is_active:
            await asyncio.sleep(TICK_S)
            if self.state in (JobState.PENDING, JobState.DOWNLOADING):
                self.progress.set_label(self.progress.label)  # re-renders the row


class JobRows(widgets.VBox):  # type: ignore[misc]
    """Every job's row, newest first: all running ones, then the last few finished ones."""

    def __init__(self) -> None:
        self.jobs: list[PanelJob] = []
        super().__init__()

    @property
    def running(self) -> list[PanelJob]:
        return [job for job in self.jobs if job.is_active]

    def add(self, job: PanelJob) -> None:
        self.jobs.insert(0, job)
        self._show_rows()

    def refresh(self) -> None:
        """After jobs ended: hide their Cancel buttons and let older finished rows go."""
        for job in self.jobs:
            if not job.is_active and job.cancel_button is not None:
                job.cancel_button.layout.display = "none"
        self._show_rows()

    def _show_rows(self) -> None:
        running = [job.row for job in self.jobs if job.is_active]
        finished = [job.row for job in self.jobs if not job.is_active][:FINISHED_ROWS_SHOWN]
        self.children = tuple(running + finished)


def cancel_message(job_id: str) -> str:
    return (
        f"Cancelled: stopped polling job {job_id}. The server may still finish it and charge "
        f"a credit; `%miragic resume {job_id}` fetches the result."
    )
