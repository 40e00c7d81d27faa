"""The progress views: a real ipywidgets HBox in a notebook, one readable line in a terminal."""

from __future__ import annotations

import io
from typing import Any

import ipywidgets as widgets
import pytest
from IPython.testing import globalipapp

from miragic_nb._core.jobs import Job
from miragic_nb._views.progress import (
    RUNNING,
    TextProgress,
    WidgetProgress,
    in_kernel,
    make_progress,
)


def inner(markup: str) -> str:
    """The text inside the one-line wrapper the widget texts are drawn in."""
    assert markup.startswith('<div style="white-space:nowrap;')
    assert markup.endswith("</div>")
    return markup[markup.index(">") + 1 : -len("</div>")]


def job(status: str = "PENDING", progress: Any = None, job_id: str = "job-1") -> Job:
    record: dict[str, Any] = {"id": job_id, "status": status}
    if progress is not None:
        record["progress"] = progress
    return Job.from_record(record)


def parts(view: WidgetProgress) -> tuple[widgets.HTML, widgets.FloatProgress, widgets.HTML]:
    head, bar, detail = view.widget.children
    return head, bar, detail


def test_widget_is_a_tqdm_style_hbox() -> None:
    view = make_progress("flux", widgets=True)
    assert isinstance(view, WidgetProgress)
    assert isinstance(view.widget, widgets.HBox)
    head, bar, detail = parts(view)
    assert isinstance(head, widgets.HTML)
    assert isinstance(bar, widgets.FloatProgress)
    assert isinstance(detail, widgets.HTML)
    assert bar.bar_style == "info"
    assert "flux" in head.value


def test_unknown_progress_is_indeterminate_then_a_percent_when_reported() -> None:
    view = make_progress("flux", widgets=True)
    assert isinstance(view, WidgetProgress)
    head, bar, detail = parts(view)
    view.update(job("PENDING"))
    assert bar.bar_style == "info"
    assert bar.value == bar.max  # full "info" bar: the tqdm look for an unknown total
    assert RUNNING in detail.value
    assert "job-1" in detail.value
    assert "pending" in head.value
    view.update(job("PENDING", progress="42"))
    assert bar.value == 42
    assert "42%" in detail.value
    assert RUNNING not in detail.value


def test_success_turns_green_and_shows_the_message() -> None:
    view = make_progress("flux", widgets=True)
    assert isinstance(view, WidgetProgress)
    _head, bar, detail = parts(view)
    view.update(job("PENDING", progress=10))
    view.succeed("flux · 1024×1024 · seed 1")
    assert bar.bar_style == "success"
    assert bar.value == 100
    assert inner(detail.value) == "flux · 1024×1024 · seed 1"
    view.update(job("PENDING", progress=5))  # a late status read changes nothing
    assert bar.bar_style == "success"
    assert bar.value == 100


def test_danger_is_never_overwritten_and_server_text_is_escaped() -> None:
    view = make_progress("<b>label</b>", widgets=True)
    assert isinstance(view, WidgetProgress)
    head, bar, detail = parts(view)
    view.fail('<img src=x onerror="alert(1)"> NSFW & co')
    assert bar.bar_style == "danger"
    assert inner(detail.value) == "&lt;img src=x onerror=&quot;alert(1)&quot;&gt; NSFW &amp; co"
    assert "<b>label</b>" not in head.value
    assert "&lt;b&gt;label&lt;/b&gt;" in head.value
    view.succeed("done")
    view.update(job("COMPLETED"))
    view.fail("second failure")
    assert bar.bar_style == "danger"
    assert "NSFW" in detail.value


def test_the_container_has_a_readable_text_repr() -> None:
    view = make_progress("turbo", widgets=True)
    assert isinstance(view, WidgetProgress)
    view.update(job("PENDING", progress=30, job_id="abc"))
    text = repr(view.widget)
    assert text.startswith("turbo: pending · 30% · ")
    assert text.endswith("job abc")
    bundle = view.widget._repr_mimebundle_()
    assert bundle["text/plain"] == text
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_set_label_redraws() -> None:
    view = make_progress("a", widgets=True)
    assert isinstance(view, WidgetProgress)
    view.set_label("b & c")
    assert "b &amp; c" in parts(view)[0].value


def test_text_progress_rewrites_one_line_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    view = make_progress("flux", widgets=False, stream=stream)
    assert isinstance(view, TextProgress)
    view.update(job("PENDING"))
    view.update(job("PENDING", progress=50))
    view.succeed()
    out = stream.getvalue()
    assert out.count("\r") == 3
    assert out.count("\n") == 1
    assert out.endswith("\n")
    assert "flux: pending · running…" in out
    assert "flux: pending · 50%" in out
    assert "flux: done · 100%" in out


def test_text_progress_prints_a_line_per_change_when_not_a_terminal() -> None:
    stream = io.StringIO()
    view = make_progress("flux", widgets=False, stream=stream)
    for percent in (10, 20, 30):
        view.update(job("PENDING", progress=percent))
    view.update(job("COMPLETED"))
    view.fail("download failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # pending once, downloading, failed: no flood of rewrites
    assert lines[0].startswith("flux: pending · 10%")
    assert lines[1].startswith("flux: downloading")
    assert lines[2] == "flux: failed · download failed"
    assert "\r" not in stream.getvalue()


def test_auto_detection_is_text_outside_a_kernel() -> None:
    shell = globalipapp.get_ipython()
    assert shell is not None
    assert not in_kernel()
    assert isinstance(make_progress("x"), TextProgress)


def test_auto_detection_is_widgets_inside_a_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    shell = globalipapp.get_ipython()
    monkeypatch.setattr(shell, "kernel", object(), raising=False)  # what ipykernel's shell has
    assert in_kernel()
    assert isinstance(make_progress("x"), WidgetProgress)
