"""One progress view for one job: a tqdm-style widget in a notebook, a text line in a terminal.

Both views take the same calls: ``set_state`` with the job's ``JobState`` (``update(job)`` after
a status read says ``pending`` or ``downloading``), then ``succeed()`` or ``fail()``; ``fail`` is
final (a red bar is never turned green again, as in tqdm). Status and
error texts come from the server, so everything put into widget HTML is escaped.

``make_progress`` picks the view like tqdm's ``autonotebook``: a running ipykernel kernel gets
widgets; a terminal IPython, plain Python or a missing ipywidgets gets text.
"""

from __future__ import annotations

import html
import sys
import threading
import time
from abc import ABC, abstractmethod
from typing import IO, TYPE_CHECKING, Any

from miragic_nb._core.states import JobState

if TYPE_CHECKING:
    from miragic_nb._core.jobs import Job

#: Shown instead of a percentage while the server reports no progress.
RUNNING = "running…"


class JobProgress(ABC):
    """The progress of one job; subclasses decide how it is drawn."""

    def __init__(self, label: str = "") -> None:
        self.label = label
        self.job_id: str | None = None
        self.status = JobState.QUEUED.value
        self.percent: float | None = None
        self.message = ""
        self.state = "running"  # running → succeeded | failed
        self._started = time.monotonic()
        self._lock = threading.Lock()

    # -- what callers use ------------------------------------------------------------------

    def update(self, job: Job) -> None:
        """Show a status read: status text, percent (when reported), elapsed time, job id."""
        # A completed job still has its image to download: say what is happening now.
        state = JobState.DOWNLOADING if job.is_completed else JobState.PENDING
        self.set_state(state, percent=job.progress, job_id=job.id)

    def set_state(
        self, state: JobState, *, percent: float | None = None, job_id: str | None = None
    ) -> None:
        """Show where a running job stands (its final outcome goes to succeed or fail)."""
        with self._lock:
            if self.state != "running":
                return
            self.job_id = job_id or self.job_id
            self.status = state.value
            self.percent = percent
            self._render()

    def succeed(self, message: str = "") -> None:
        """Mark the job done; ``message`` (e.g. the result's caption) replaces the detail text."""
        with self._lock:
            if self.state == "failed":
                return
            self.state = "succeeded"
            self.status = "done"
            self.percent = 100.0
            self.message = message
            self._render()

    def fail(self, message: str) -> None:
        """Mark the job failed with a short reason; nothing changes the view afterwards."""
        with self._lock:
            if self.state == "failed":
                return
            self.state = "failed"
            self.status = "failed"
            self.message = message
            self._render()

    def set_label(self, text: str) -> None:
        with self._lock:
            self.label = text
            self._render()

    def refresh(self) -> None:
        """Redraw (the elapsed time moves on between status reads)."""
        with self._lock:
            if self.state == "running":
                self._render()

    @abstractmethod
    def show(self) -> None:
        """Put the view into the current output."""

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    # -- shared text -----------------------------------------------------------------------

    def detail_text(self) -> str:
        """The right-hand text: percent or "running…", elapsed seconds, job id, or the message."""
        if self.state != "running" and self.message:
            return self.message
        parts = [RUNNING if self.percent is None else f"{self.percent:.0f}%"]
        parts.append(f"{self.elapsed:.1f}s")
        if self.job_id:
            parts.append(f"job {self.job_id}")
        return " · ".join(parts)

    def text(self) -> str:
        """The whole view as one line of plain text."""
        head = f"{self.label}: {self.status}" if self.label else self.status
        return f"{head} · {self.detail_text()}"

    def __repr__(self) -> str:
        return self.text()

    @abstractmethod
    def _render(self) -> None:
        """Draw the current state (called with the lock held)."""


class WidgetProgress(JobProgress):
    """``HBox([HTML(label and status), FloatProgress, HTML(detail)])``, as tqdm draws it."""

    def __init__(self, label: str = "") -> None:
        super().__init__(label)
        import ipywidgets as widgets

        # One line in any width: the texts never wrap, they are cut with an ellipsis, and the
        # bar takes what is left (panels put rows in narrow columns).
        self._head = widgets.HTML(layout=widgets.Layout(flex="0 1 auto", max_width="40%"))
        self._bar = widgets.FloatProgress(
            min=0.0,
            max=100.0,
            value=0.0,
            bar_style="info",
            layout=widgets.Layout(flex="1 1 40%", min_width="6em", max_width="32em"),
        )
        self._detail = widgets.HTML(layout=widgets.Layout(flex="0 1 auto", min_width="0"))
        self.widget = _box_class()(
            children=[self._head, self._bar, self._detail],
            progress=self,
            layout=widgets.Layout(flex="1 1 auto", min_width="0", align_items="center"),
        )
        self._handle: Any = None
        self._render()

    def show(self) -> None:
        """Display the bar; when it finishes, its output's text/plain becomes the final line."""
        from IPython.display import display

        self._handle = display(self.widget, display_id=True)  # type: ignore[no-untyped-call]

    def succeed(self, message: str = "") -> None:
        super().succeed(message)
        self._refresh_output()

    def fail(self, message: str) -> None:
        super().fail(message)
        self._refresh_output()

    def _refresh_output(self) -> None:
        # Re-publishing the same widget keeps the live view and replaces the saved text/plain
        # (written when the bar was first shown) with the outcome, for viewers without widgets.
        # Only after show(), which the caller does on the cell's own thread.
        if self._handle is not None:
            self._handle.update(self.widget)

    def _render(self) -> None:
        label = f"<b>{html.escape(self.label)}</b> " if self.label else ""
        self._head.value = _one_line(f"{label}{html.escape(self.status)}")
        self._detail.value = _one_line(html.escape(self.detail_text()))
        if self.state == "failed":
            self._bar.bar_style = "danger"
        elif self.state == "succeeded":
            self._bar.bar_style = "success"
            self._bar.value = 100.0
        elif self.percent is None:
            # FloatProgress has no indeterminate mode: a full "info" bar, as tqdm does for an
            # unknown total, while the text says "running…".
            self._bar.bar_style = "info"
            self._bar.value = 100.0
        else:
            self._bar.bar_style = "info"
            self._bar.value = self.percent


def _one_line(markup: str) -> str:
    return f'<div style="white-space:nowrap;overflow:hidden;text-overflow:ellipsis">{markup}</div>'


_BOX_CLASS: type[Any] | None = None


def _box_class() -> type[Any]:
    """An ``HBox`` whose text repr is the progress line, for frontends without widgets."""
    global _BOX_CLASS
    if _BOX_CLASS is None:
        import ipywidgets as widgets

        class ProgressBox(widgets.HBox):  # type: ignore[misc]
            def __init__(self, *, progress: JobProgress, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                self._progress = progress

            def __repr__(self) -> str:
                return self._progress.text()

        _BOX_CLASS = ProgressBox
    return _BOX_CLASS


class TextProgress(JobProgress):
    """One line rewritten in place with ``\\r`` on a terminal, or a line per change otherwise."""

    def __init__(
        self, label: str = "", *, stream: IO[str] | None = None, rewrite: bool | None = None
    ) -> None:
        super().__init__(label)
        self._stream = stream
        self._rewrite = rewrite
        self._last_printed = ""
        self._width = 0

    def show(self) -> None:
        with self._lock:
            self._render()

    @property
    def stream(self) -> IO[str]:
        # Looked up late: IPython's capture_output and the kernel swap sys.stdout per cell.
        return self._stream if self._stream is not None else sys.stdout

    def _render(self) -> None:
        stream = self.stream
        rewrite = self._rewrite
        if rewrite is None:
            isatty = getattr(stream, "isatty", None)
            rewrite = bool(isatty and isatty())
        finished = self.state != "running"
        if rewrite:
            line = self.text()
            padding = " " * max(self._width - len(line), 0)
            self._width = len(line)
            stream.write("\r" + line + padding + ("\n" if finished else ""))
        else:
            # Without a terminal a rewritten line would pile up: print only real changes.
            key = f"{self.label}|{self.status}|{self.state}"
            if key == self._last_printed:
                return
            self._last_printed = key
            stream.write(self.text() + "\n")
        stream.flush()


def in_kernel() -> bool:
    """True inside a running ipykernel (Jupyter, VS Code ...), False in a terminal or script."""
    ipython_module = sys.modules.get("IPython")
    if ipython_module is None:
        return False
    shell = ipython_module.get_ipython()
    if shell is None:
        return False
    # What tqdm.autonotebook checks; a TerminalInteractiveShell has no IPKernelApp config.
    return "IPKernelApp" in getattr(shell, "config", {}) or hasattr(shell, "kernel")


def make_progress(
    label: str = "",
    *,
    widgets: bool | None = None,
    stream: IO[str] | None = None,
    rewrite: bool | None = None,
) -> JobProgress:
    """A ``WidgetProgress`` in a notebook kernel, else a ``TextProgress``.

    ``widgets`` forces the choice; ``stream`` and ``rewrite`` configure the text view (by
    default it writes to ``sys.stdout`` and rewrites its line only on a terminal).
    """
    if widgets is None:
        widgets = in_kernel()
    if widgets:
        try:
            return WidgetProgress(label)
        except ImportError:  # ipywidgets missing: fall back to text rather than fail a job
            pass
    return TextProgress(label, stream=stream, rewrite=rewrite)
