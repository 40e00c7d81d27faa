"""One progress view per job: a tqdm-style widget in a notebook, a text line in a terminal.

Every view takes the same calls: ``set_state`` with the job's ``JobState`` (``update(job)`` after
a status read says ``pending`` or ``downloading``), then one ending: ``succeed()``, ``fail()``
(the server or the transfer failed: red) or ``end(word)`` for any other way a job ends
(cancelled, never sent, interrupted, timed out: not red). An ending is final, as in tqdm. Status
and error texts come from the server, so everything put into widget HTML is escaped.

A cell's jobs are shown together by a ``ProgressGroup``: one output of one row per job while they
run (widgets, or lines redrawn in place on a terminal), which collapses to one plain line of text
and HTML when the cell ends, so a notebook saved without widget state still says what happened.
Without a terminal (a log, CI) each job prints one line per change of state instead.

``make_progress`` picks the view like tqdm's ``autonotebook``: a running ipykernel kernel gets
widgets; a terminal IPython, plain Python or a missing ipywidgets gets text.
"""

from __future__ import annotations

import html
import shutil
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

from miragic_nb._core.states import JobState

if TYPE_CHECKING:
    from miragic_nb._core.jobs import Job

#: Shown instead of a percentage while the server reports no progress.
RUNNING = "running…"
#: The word of a job that finished with its image.
COMPLETED = JobState.COMPLETED.value
#: The word of a job the server (or the transfer) failed: the only red one.
FAILED = JobState.FAILED.value
#: Colours of the ending words in the collapsed HTML line (JupyterLab's theme, with fallbacks).
_WORD_COLOURS = {
    COMPLETED: "var(--jp-success-color1, #2e7d32)",
    FAILED: "var(--jp-error-color1, #c62828)",
}
_OTHER_ENDING_COLOUR = "var(--jp-warn-color1, #e65100)"
#: ANSI: erase to the end of the line; move the cursor up / down ``n`` lines.
_ERASE = "\x1b[K"


def word(state: JobState | str) -> str:
    """How a state reads to a person: ``timed_out`` → ``timed out``."""
    return str(state).replace("_", " ")


class JobProgress(ABC):
    """The progress of one job; subclasses decide how it is drawn."""

    def __init__(self, label: str = "") -> None:
        self.label = label
        self.job_id: str | None = None
        self.status = JobState.QUEUED.value
        self.percent: float | None = None
        self.message = ""
        self.note = ""
        self.state = "running"  # running → succeeded | failed | ended
        self._started = time.monotonic()
        self._stopped: float | None = None
        self._lock = threading.Lock()

    # -- what callers use ------------------------------------------------------------------

    def update(self, job: Job) -> None:
        """Show a status read: status text, percent (when reported), elapsed time, job id."""
        # A completed job still has its image to download: say what is happening now.
        state = JobState.DOWNLOADING if job.is_completed else JobState.PENDING
        self.set_state(state, percent=job.progress, job_id=job.id)

    def set_state(
        self, state: JobState | str, *, percent: float | None = None, job_id: str | None = None
    ) -> None:
        """Show where a running job stands (its ending goes to succeed, fail or end)."""
        with self._lock:
            if self.state != "running":
                return
            self.job_id = job_id or self.job_id
            self.status = word(state)
            self.percent = percent
            self._render()

    def succeed(self, message: str = "") -> None:
        """Mark the job completed; ``message`` (e.g. the result's caption) replaces the detail."""
        with self._lock:
            if self.state != "running":
                return
            self.percent = 100.0
            self._finish("succeeded", COMPLETED, message)

    def fail(self, message: str) -> None:
        """Mark the job failed with a short reason; nothing changes the view afterwards."""
        with self._lock:
            # A stopped job (cancelled, interrupted...) that errors afterwards stays stopped.
            if self.state in ("failed", "ended"):
                return
            self._finish("failed", FAILED, message)

    def end(self, state: JobState | str, message: str = "") -> None:
        """Any other ending: ``cancelled``, ``never sent``, ``interrupted``, ``timed out``...
        shown in its own word and not as a failure (the bar is not red)."""
        if str(state) == COMPLETED:
            self.succeed(message)
            return
        if str(state) == FAILED:
            self.fail(message)
            return
        with self._lock:
            if self.state != "running":
                return
            self._finish("ended", word(state), message)

    def _finish(self, state: str, status: str, message: str) -> None:
        self.state = state
        self.status = status
        self.message = message
        self._stopped = time.monotonic()
        self._render()

    def stop(self, word: str, message: str = "") -> None:
        """Mark the job stopped, not failed (``word``: cancelled, never sent, interrupted,
        timed out): ``end`` in the words the caller already has."""
        self.end(word, message)

    def set_label(self, text: str) -> None:
        with self._lock:
            self.label = text
            self._render()

    def set_note(self, text: str) -> None:
        """Extra words after the elapsed time while the job runs (a batch's counts)."""
        with self._lock:
            self.note = text
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
        end = self._stopped if self._stopped is not None else time.monotonic()
        return end - self._started

    @property
    def finished(self) -> bool:
        return self.state != "running"

    # -- shared text -----------------------------------------------------------------------

    def detail_text(self) -> str:
        """The right-hand text: percent or "running…", elapsed seconds, job id, or the message."""
        if self.state != "running" and self.message:
            return self.message
        parts = [RUNNING if self.percent is None else f"{self.percent:.0f}%"]
        parts.append(f"{self.elapsed:.1f}s")
        if self.job_id:
            parts.append(f"job {self.job_id}")
        if self.note:
            parts.append(self.note)
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
    """``HBox([HTML(label and status), FloatProgress, HTML(detail)])``, as tqdm draws it.

    Nothing is cut: in a narrow output the row wraps, the detail going under the bar, and long
    texts wrap between words (a state word never breaks).
    """

    def __init__(self, label: str = "") -> None:
        super().__init__(label)
        import ipywidgets as widgets

        self._head = widgets.HTML(layout=widgets.Layout(flex="0 1 auto", min_width="0"))
        self._bar = widgets.FloatProgress(
            min=0.0,
            max=100.0,
            value=0.0,
            bar_style="info",
            layout=widgets.Layout(flex="1 1 12em", min_width="6em", max_width="32em"),
        )
        # Takes the rest of the line, or the whole next line when there is too little left.
        self._detail = widgets.HTML(layout=widgets.Layout(flex="1 1 14em", min_width="0"))
        self.widget = _box_class()(
            children=[self._head, self._bar, self._detail],
            progress=self,
            layout=widgets.Layout(
                flex="1 1 auto", min_width="0", align_items="center", flex_flow="row wrap"
            ),
        )
        self.widget.add_class("miragic-progress")
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

    def end(self, state: JobState | str, message: str = "") -> None:
        super().end(state, message)
        self._refresh_output()

    def _refresh_output(self) -> None:
        # Re-publishing the same widget keeps the live view and replaces the saved text/plain
        # (written when the bar was first shown) with the outcome, for viewers without widgets.
        # Only after show(), which the caller does on the cell's own thread.
        if self._handle is not None:
            self._handle.update(self.widget)

    def _render(self) -> None:
        label = f"<b>{html.escape(self.label)}</b> " if self.label else ""
        status = f'<span style="white-space:nowrap">{html.escape(self.status)}</span>'
        self._head.value = _wrapping(f"{label}{status}")
        self._detail.value = _wrapping(html.escape(self.detail_text()))
        if self.state == "failed":
            self._bar.bar_style = "danger"
        elif self.state == "ended":
            self._bar.bar_style = "warning"
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


def _wrapping(markup: str) -> str:
    """Markup that wraps between words (ipywidgets' HTML would keep it on one clipped line)."""
    return (
        '<div class="miragic-progress-text" style="white-space:normal;overflow-wrap:anywhere;'
        f'line-height:1.3">{markup}</div>'
    )


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
    """One line rewritten in place with ``\\r`` on a terminal, or a line per change otherwise.

    In a ``ProgressGroup`` on a terminal, the group draws the line instead (one per job).
    """

    def __init__(
        self, label: str = "", *, stream: IO[str] | None = None, rewrite: bool | None = None
    ) -> None:
        super().__init__(label)
        self._stream = stream
        self._rewrite = rewrite
        self._last_printed = ""
        self._width = 0
        self.board: _Board | None = None

    def show(self) -> None:
        with self._lock:
            self._render()

    @property
    def stream(self) -> IO[str]:
        # Looked up late: IPython's capture_output and the kernel swap sys.stdout per cell.
        return self._stream if self._stream is not None else sys.stdout

    @property
    def rewrites(self) -> bool:
        """Whether the line is redrawn in place (a terminal) rather than printed per change."""
        if self._rewrite is not None:
            return self._rewrite
        return is_terminal(self.stream)

    def _render(self) -> None:
        if self.board is not None:
            self.board.draw(self)
            return
        stream = self.stream
        finished = self.state != "running"
        if self.rewrites:
            line = fit(self.text(), terminal_width())
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


def is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def terminal_width() -> int:
    return max(shutil.get_terminal_size().columns, 20)


def fit(line: str, width: int) -> str:
    """``line`` cut to ``width - 1`` characters: a terminal line that wraps cannot be redrawn."""
    return line if len(line) < width else line[: width - 2] + "…"


class _Board:
    """Several text views as lines redrawn in place on a terminal (ANSI cursor moves), like
    tqdm's nested bars; more jobs than the screen has lines become one line of counts."""

    def __init__(self, group: ProgressGroup, views: Sequence[TextProgress], stream: IO[str]):
        self._group = group
        self._views = list(views)
        self._stream = stream
        self._lock = threading.Lock()
        rows = shutil.get_terminal_size().lines
        self._one_line = len(self._views) > 1 and len(self._views) >= rows - 1
        self._drawn = False
        self._closed = False

    def start(self) -> None:
        with self._lock:
            width = terminal_width()
            if self._one_line:
                self._stream.write(fit(self._group.summary(), width) + _ERASE)
            else:
                for view in self._views:
                    self._stream.write(fit(view.text(), width) + _ERASE + "\n")
            self._drawn = True
            self._stream.flush()

    def draw(self, view: TextProgress) -> None:
        with self._lock:
            if not self._drawn or self._closed:
                return
            width = terminal_width()
            if self._one_line:
                self._stream.write("\r" + fit(self._group.summary(), width) + _ERASE)
            else:
                up = len(self._views) - self._views.index(view)
                line = fit(view.text(), width)
                self._stream.write(f"\x1b[{up}A\r{line}{_ERASE}\x1b[{up}B\r")
            self._stream.flush()

    def close(self) -> None:
        with self._lock:
            if self._one_line and self._drawn and not self._closed:
                self._stream.write("\r" + fit(self._group.summary(), terminal_width()))
                self._stream.write(_ERASE + "\n")
                self._stream.flush()
            self._closed = True


class ProgressGroup:
    """The jobs of one cell shown together, and collapsed to one plain line when it ends.

    Widgets: one output holding a row per job, replaced on ``close()`` by a text/plain and
    text/html line (no widget: GitHub, nbviewer, VS Code and nbconvert show it). Text on a
    terminal: a line per job redrawn in place. Text elsewhere: each view prints its changes and
    ``close()`` prints the summary of several jobs.
    """

    def __init__(self, views: Sequence[JobProgress]) -> None:
        self.views = list(views)
        self._started = time.monotonic()
        self._stopped: float | None = None
        self._handle: Any = None
        self._board: _Board | None = None
        self._closed = False

    def show(self) -> None:
        """Put every row into the current output (call on the cell's own thread)."""
        widget_views = [v for v in self.views if isinstance(v, WidgetProgress)]
        if widget_views and len(widget_views) == len(self.views):
            import ipywidgets as widgets
            from IPython.display import display

            rows = [v.widget for v in widget_views]
            shown = rows[0] if len(rows) == 1 else widgets.VBox(rows)
            self._handle = display(shown, display_id=True)  # type: ignore[no-untyped-call]
            return
        text_views = [v for v in self.views if isinstance(v, TextProgress)]
        if text_views and len(text_views) == len(self.views) and text_views[0].rewrites:
            self._board = _Board(self, text_views, text_views[0].stream)
            for text_view in text_views:
                text_view.board = self._board
            self._board.start()
            return
        for view in self.views:
            view.show()

    def refresh(self) -> None:
        """Move the elapsed time of the jobs still running."""
        for view in self.views:
            view.refresh()

    @property
    def elapsed(self) -> float:
        end = self._stopped if self._stopped is not None else time.monotonic()
        return end - self._started

    def summary(self) -> str:
        """One line: how many jobs ended which way (running ones too), and the time taken."""
        views = self.views
        if len(views) == 1:
            (view,) = views
            if view.finished and view.state != "succeeded" and view.message:
                return f"{view.status} · {view.message} · {self.elapsed:.1f}s"
            job = f" · job {view.job_id}" if view.job_id else ""
            return f"{view.status} · {self.elapsed:.1f}s{job}"
        counts: dict[str, int] = {}
        for view in views:
            counts[view.status] = counts.get(view.status, 0) + 1
        parts = [f"{len(views)} jobs", *(f"{n} {status}" for status, n in counts.items())]
        return " · ".join([*parts, f"{self.elapsed:.1f}s"])

    def summary_bundle(self) -> dict[str, str]:
        """The collapsed line as text/plain and text/html (each ending word in its colour)."""
        text = self.summary()
        markup = html.escape(text)
        for status in sorted({v.status for v in self.views if v.finished}, key=len, reverse=True):
            colour = _WORD_COLOURS.get(status, _OTHER_ENDING_COLOUR)
            escaped = html.escape(status)
            markup = markup.replace(
                f" {escaped} ·", f' <span style="color:{colour}">{escaped}</span> ·'
            )
            if markup.startswith(f"{escaped} ·"):
                markup = f'<span style="color:{colour}">{escaped}</span>' + markup[len(escaped) :]
        return {
            "text/plain": text,
            "text/html": f'<div class="miragic-progress-summary">{markup}</div>',
        }

    def close(self) -> None:
        """The cell is over: collapse the rows to one plain line (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stopped = time.monotonic()
        if self._handle is not None:
            self._handle.update(self.summary_bundle(), raw=True)
            for view in self.views:
                if isinstance(view, WidgetProgress):
                    view.widget.close()
            return
        if self._board is not None:
            self._board.close()
            return
        text_views = [v for v in self.views if isinstance(v, TextProgress)]
        if len(self.views) > 1 and text_views:
            stream = text_views[0].stream
            stream.write(self.summary() + "\n")
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
