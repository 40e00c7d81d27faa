"""Text from a prompt or from the server is shown as text wherever it is put into HTML.

A prompt like ``<img src=x onerror=alert(1)>`` and an ``errorMessage`` like
``<script>alert(1)</script>`` go through the magic (progress bar, caption, grid, history table)
and the panel (status, progress rows, result caption, gallery labels). Every ``text/html``
output and every HTML widget value must hold the escaped form and never the raw tag.
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import pytest

try:
    from ipywidgets.widgets.widget import _instances
except ImportError:  # ipywidgets 8.0 keeps the live widgets on the class
    from ipywidgets import Widget

    _instances = Widget._active_widgets

from miragic_nb import Client
from miragic_nb._magic.magic import Miragic
from miragic_nb._panel.panel import Panel
from miragic_nb.emulator import Emulator
from tests.panel_fixtures import html_values, panel, widget_tree

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from tests.magic_fixtures import Run, Runner

pytest_plugins = ["tests.magic_fixtures"]
__all__ = ["panel"]  # the fixture, used by name

PROMPT = "<img src=x onerror=alert(1)> a lighthouse & <b>bold</b>"
SERVER_ERROR = "<script>alert(1)</script> model <i>overloaded</i>"
RAW_TAGS = ("<img src=x", "<script", "<b>bold", "<i>overloaded")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def assert_escaped(markup: Iterable[str], *texts: str) -> None:
    """No raw tag from a prompt or the server anywhere; each text present in escaped form."""
    joined = "\n".join(markup)
    for tag in RAW_TAGS:
        assert tag not in joined, tag
    for text in texts:
        assert html.escape(text, quote=False) in joined or html.escape(text) in joined, text


def cell_markup(cell: Run) -> list[str]:
    """Every text/html output of a cell, and every HTML widget value of the widgets it showed."""
    markup = [str(o.data["text/html"]) for o in cell.outputs if "text/html" in o.data]
    for output in cell.outputs:
        view = output.data.get(WIDGET_VIEW)
        if view is not None:
            root = _instances[view["model_id"]]
            markup += [w.value for w in widget_tree(root) if isinstance(w, widgets.HTML)]
    return markup


# -- the magic -------------------------------------------------------------------------------------


@pytest.fixture
def widget_magic(magic: Miragic, api: Emulator) -> Miragic:
    magic.progress = "widgets"  # the notebook view, with HTML labels
    return magic


def test_magic_progress_and_caption_escape_the_prompt(
    run: Runner, widget_magic: Miragic, api: Emulator
) -> None:
    cell = run(f"%%miragic -W 256 -H 256 --seed 1\n{PROMPT}")
    assert cell.error is None, cell.text
    markup = cell_markup(cell)
    assert any(WIDGET_VIEW in o.data for o in cell.outputs)  # the bar really was a widget
    assert "done" in "\n".join(markup)  # its HTML labels were found and checked
    assert_escaped(markup)
    # The image's own caption (text/plain next to the original bytes) is plain text.
    (image,) = cell.image_outputs()
    assert "image/png" not in image


def test_magic_grid_escapes_prompt_and_labels(
    run: Runner, ip: InteractiveShell, widget_magic: Miragic, api: Emulator
) -> None:
    cell = run(f"%%miragic -W 256 -H 256 --model flux,turbo --seed 3\n{PROMPT}")
    assert cell.error is None, cell.text
    # The grid is the cell's value: format it as the notebook does.
    formatter = ip.display_formatter
    assert formatter is not None
    grids = [str(formatter.format(ip.user_ns["_"])[0]["text/html"])]  # type: ignore[no-untyped-call]
    assert f'alt="{html.escape(PROMPT, quote=True)}"' in grids[0]
    assert_escaped(grids + cell_markup(cell))


def test_magic_failure_escapes_the_server_message(
    run: Runner, widget_magic: Miragic, api: Emulator
) -> None:
    api.faults.configure(force_failure=True, failure_message=SERVER_ERROR)
    cell = run(f"%%miragic -W 256 -H 256\n{PROMPT}")
    assert cell.error is not None
    markup = cell_markup(cell)
    assert_escaped(markup, "<script>alert(1)</script>")
    assert "failed" in "\n".join(markup)


def test_history_table_escapes_prompts(run: Runner, magic: Miragic, api: Emulator) -> None:
    assert run(f"%%miragic -W 256 -H 256\n{PROMPT}").error is None
    api.faults.configure(force_failure=True, failure_message=SERVER_ERROR)
    assert run(f"%%miragic -W 256 -H 256\n{PROMPT} again").error is not None
    cell = run("%miragic history")
    (table,) = [str(o.data["text/html"]) for o in cell.outputs if "text/html" in o.data]
    assert table.count("&lt;img src=x onerror=alert(1)&gt;") == 2
    assert_escaped([table], "<img src=x onerror=alert(1)>")
    assert "FAILED" in table


# -- the panel -------------------------------------------------------------------------------------


async def _generate(panel: Panel) -> None:
    panel.generate_button.click()
    await panel.wait()


def test_panel_escapes_the_prompt_everywhere(panel: Panel, emulator: Emulator) -> None:
    panel.prompt.value = PROMPT
    panel.seed.value = "4"
    statuses: list[str] = []
    panel.status.observe(lambda change: statuses.append(str(change["new"])), names="value")
    asyncio.run(_generate(panel))
    assert panel.image is not None
    (card,) = panel.cards
    markup = html_values(panel) + html_values(card) + statuses
    assert_escaped(markup, "<img src=x onerror=alert(1)>")
    assert html.escape(PROMPT) in panel.result_caption.value
    assert html.escape(PROMPT, quote=True) in card.caption.value  # the tooltip attribute too
    # Progress rows and every status the panel went through ("Sending …", percentages, Done).
    assert len(statuses) >= 3


def test_panel_escapes_the_server_error(panel: Panel, emulator: Emulator) -> None:
    emulator.faults.configure(force_failure=True, failure_message=SERVER_ERROR)
    panel.prompt.value = PROMPT
    asyncio.run(_generate(panel))
    assert panel.history[0].state == "failed"
    markup = html_values(panel) + [w.value for w in _row_html(panel)]
    assert_escaped(markup, "<script>alert(1)</script>")
    assert html.escape("<script>alert(1)</script>") in panel.status.value


def test_panel_escapes_the_base_url(emulator: Emulator) -> None:
    with Client(emulator.api_key, emulator.url + "/<b>api</b>") as odd:
        made = Panel(odd)
        try:
            assert "&lt;b&gt;api&lt;/b&gt;" in made.header.value
            assert "<b>api" not in made.header.value
        finally:
            made.close()


def _row_html(panel: Panel) -> list[Any]:
    rows = [job.row for job in panel.history if job.row is not None]
    return [w for row in rows for w in widget_tree(row) if isinstance(w, widgets.HTML)]
