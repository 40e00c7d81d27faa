"""The input image in each face's words: the panel's Image field (only for kontext, with a
thumbnail, one message when another model is chosen), ``--image-url`` in the magic and
``image_url`` in Python.

Real widgets in plain pytest, and the magic in a real IPython shell, against the emulator.
"""

from __future__ import annotations

import asyncio
import html
import io
import re
from typing import TYPE_CHECKING

import ipywidgets as widgets
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from PIL import Image

from miragic_nb._core.errors import InvalidRequestError
from miragic_nb._core.request import MODELS, GenerationRequest
from miragic_nb._panel.panel import Panel
from miragic_nb._panel.style import ERROR_STYLE, WARN_STYLE
from miragic_nb.emulator import Emulator
from tests.panel_fixtures import CREATE, html_values, panel

if TYPE_CHECKING:
    from .magic_fixtures import Runner

__all__ = ["panel"]  # the fixture, used by name
pytest_plugins = ["tests.magic_fixtures"]


def generate(panel: Panel, prompt: str) -> None:
    panel.prompt.value = prompt

    async def scenario() -> None:
        panel.generate_button.click()
        await panel.wait()

    asyncio.run(scenario())


def warnings_shown(panel: Panel) -> list[str]:
    """Every warning or error the panel's markup holds, as text."""
    return [
        html.unescape(re.sub(r"<[^>]+>", "", value))
        for value in html_values(panel)
        if WARN_STYLE in value or ERROR_STYLE in value
    ]


def shown(widget: widgets.Widget) -> bool:
    return bool(widget.layout.display != "none")


def test_the_image_field_is_there_only_for_kontext(panel: Panel) -> None:
    for model in MODELS:
        panel.model.value = model
        assert shown(panel.form.image_row) is (model == "kontext"), model
    assert panel.image_url.description == "Image"


def test_use_as_input_then_another_model_says_one_thing_in_the_panels_words(
    panel: Panel, emulator: Emulator
) -> None:
    generate(panel, "a red bicycle")
    source = panel.image
    assert source is not None
    panel.cards[0].use_button.click()
    assert panel.model.value == "kontext"
    assert shown(panel.form.image_row)
    # The input's thumbnail beside its field: the result itself, small.
    assert shown(panel.image_preview)
    preview = Image.open(io.BytesIO(panel.image_preview.value))
    assert preview.format == "JPEG"
    assert max(preview.size) == 64
    assert warnings_shown(panel) == []

    panel.model.value = "flux"
    assert not shown(panel.form.image_row)
    said = warnings_shown(panel)
    assert said == ["flux takes no input image: the Image is kept for kontext and not sent"]

    generate(panel, "a bicycle from the prompt alone")
    assert panel.history[0].state == "completed", panel.status.value
    created = [r.form for r in emulator.requests if r.method == "POST" and r.path == CREATE]
    assert created[-1]["model"] == "flux"
    assert "image_url" not in created[-1]
    assert warnings_shown(panel) == said  # still that one message, no refusal added
    assert not any("image_url" in value for value in html_values(panel))

    panel.model.value = "kontext"
    assert panel.image_url.value == source.metadata["result_url"]  # kept for kontext
    assert shown(panel.image_preview)
    assert warnings_shown(panel) == []


def test_a_picture_in_a_variable_shows_its_thumbnail(panel: Panel, ip: InteractiveShell) -> None:
    ip.user_ns["t_cat"] = Image.new("RGB", (300, 150), (200, 30, 30))
    panel.model.value = "kontext"
    panel.image_url.value = "{t_cat}"
    assert shown(panel.image_preview)
    assert Image.open(io.BytesIO(panel.image_preview.value)).size == (64, 32)
    panel.image_url.value = "https://example.com/cat.jpg"  # a URL is not fetched to preview it
    assert not shown(panel.image_preview)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("http://", "Image must be an http(s) URL, got 'http://'"),
        ("no-such-picture.jpg", "Image: there is no file 'no-such-picture.jpg'"),
    ],
)
def test_the_panels_image_errors_name_the_field(
    panel: Panel, emulator: Emulator, text: str, says: str
) -> None:
    panel.prompt.value = "edit it"
    panel.model.value = "kontext"
    panel.image_url.value = text
    assert panel.generate() is None
    message = html.unescape(panel.errors["image_url"].value)
    assert says in message
    assert "image_url" not in message
    assert emulator.requests == []


def test_the_magic_speaks_of_flags(run: Runner, api: Emulator) -> None:
    cell = run("%%miragic --model flux --image-url https://example.com/a.jpg\na cat")
    assert isinstance(cell.error, UsageError)
    assert (
        "--image-url works only with model 'kontext' (image-to-image), not 'flux'; "
        "use --model kontext or drop --image-url"
    ) in cell.text
    assert "image_url" not in cell.text
    missing = run("%%miragic --model kontext --image-url no-such-picture.jpg\na cat")
    assert isinstance(missing.error, UsageError)
    assert "--image-url: there is no file 'no-such-picture.jpg'" in missing.text
    assert "image_url" not in missing.text
    assert api.requests == []


def test_python_speaks_of_arguments() -> None:
    with pytest.raises(InvalidRequestError) as info:
        GenerationRequest("a cat", image_url="https://example.com/a.jpg")
    assert "use model='kontext' or drop image_url" in info.value.message
