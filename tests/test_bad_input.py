"""Every invalid input is refused before any request, with a message that says what is allowed.

Each row of the bad-input table in ``docs/reliability.md`` is a case here (or, for the magic's
cell options and the panel's fields, in ``test_magic_errors.py`` / ``test_panel.py``, which
assert the same: the message, and that no request reached the emulator). Also here: an
``image_url`` is validated but never fetched by the client; only the API fetches it.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

import pytest
from IPython.core.error import UsageError
from PIL import Image
from traitlets import TraitError

from miragic_nb import Client, InvalidRequestError, MissingAPIKeyError
from miragic_nb._magic.magic import Miragic
from miragic_nb._panel.panel import Panel
from miragic_nb._store.history import History
from miragic_nb.emulator import Emulator
from tests.conftest import FAST_POLLS
from tests.loopback import loopback_server
from tests.panel_fixtures import panel

if TYPE_CHECKING:
    from tests.magic_fixtures import Run, Runner

pytest_plugins = ["tests.magic_fixtures"]
__all__ = ["panel"]  # the fixture, used by name

NaN = float("nan")


def nothing_reached(emulator: Emulator) -> None:
    assert emulator.requests == []
    assert emulator.second_origin.requests == []
    assert History().records() == []  # and nothing was recorded as if a job existed


# -- the client ------------------------------------------------------------------------------

GENERATE_ROWS: list[tuple[dict[str, Any], str]] = [
    ({"prompt": "   "}, "prompt must be a non-empty string"),
    ({"prompt": None}, "prompt must be a non-empty string"),
    ({"model": "sdxl"}, "unknown model 'sdxl'; choose one of: flux, turbo, gptimage, kontext"),
    ({"width": 100}, "width must be from 256 to 2048 pixels, got 100"),
    ({"height": 4096}, "height must be from 256 to 2048 pixels, got 4096"),
    ({"width": "wide"}, "width must be an integer from 256 to 2048, got 'wide'"),
    ({"width": 512.5}, "width must be an integer from 256 to 2048, got 512.5"),
    ({"height": True}, "height must be an integer from 256 to 2048, got True"),
    (
        {"image_url": "https://example.com/a.jpg"},
        "image_url works only with model 'kontext' (image-to-image), not 'flux'",
    ),
    (
        {"model": "kontext", "image_url": "ftp://example.com/a.jpg"},
        "image_url must be an http(s) URL, got 'ftp://example.com/a.jpg'",
    ),
    ({"model": "kontext", "image_url": "http://"}, "image_url must be an http(s) URL"),
    # Not a URL: a local file, which must exist (docs/image-inputs.md).
    ({"model": "kontext", "image_url": "a.jpg"}, "there is no file 'a.jpg'; give an http(s) URL"),
    ({"seed": -1}, "seed must be a non-negative integer, got -1"),
    ({"seed": "abc"}, "seed must be a non-negative integer, got 'abc'"),
    ({"seed": 1.5}, "seed must be a non-negative integer, got 1.5"),
    ({"seed": True}, "seed must be a non-negative integer, got True"),
    ({"enhance": "yes"}, "enhance must be True, False or None (server default), got 'yes'"),
    ({"nologo": 1}, "nologo must be True, False or None (server default), got 1"),
    ({"timeout": 0}, "timeout must be a positive number of seconds, got 0"),
    ({"timeout": -1}, "timeout must be a positive number of seconds, got -1"),
    ({"timeout": NaN}, "timeout must be a positive number of seconds, got nan"),
    ({"timeout": "10"}, "timeout must be a positive number of seconds, got '10'"),
]


@pytest.mark.parametrize(("options", "message"), GENERATE_ROWS, ids=lambda v: repr(v)[:40])
def test_generate_refuses_bad_input(
    client: Client, emulator: Emulator, options: dict[str, Any], message: str
) -> None:
    options = dict(options)
    prompt = options.pop("prompt", "a cat")
    with pytest.raises(InvalidRequestError) as info:
        client.generate(prompt, **options)
    assert message in str(info.value)
    assert info.value.field in {*options, "prompt"}  # names the field at fault
    if "timeout" not in options:  # submit has no timeout; the rest is the same rule
        with pytest.raises(InvalidRequestError) as again:
            client.submit(prompt, **options)
        assert str(again.value) == str(info.value)
    nothing_reached(emulator)


BAD_JOB_IDS = ["", "   ", "../etc/passwd", "a/b", "x" * 201, "id with spaces", None, 42]


@pytest.mark.parametrize("job_id", BAD_JOB_IDS, ids=lambda v: repr(v)[:20])
@pytest.mark.parametrize("method", ["get_job", "wait", "resume"])
def test_a_malformed_job_id_is_refused(
    client: Client, emulator: Emulator, method: str, job_id: object
) -> None:
    with pytest.raises(InvalidRequestError, match="job_id must be an id the API returned"):
        getattr(client, method)(job_id)
    nothing_reached(emulator)


CLIENT_ROWS: list[tuple[dict[str, Any], str]] = [
    (
        {"base_url": "http://backend.miragic.ai"},
        "uses plain http to a non-loopback host; use https",
    ),
    ({"base_url": "ftp://backend.miragic.ai"}, "base URL must be an http(s) URL"),
    ({"base_url": "backend.miragic.ai"}, "base URL must be an http(s) URL"),
    ({"base_url": "https://user:pw@backend.miragic.ai"}, "must not carry credentials"),
    ({"base_url": "https://backend.miragic.ai/?key=1"}, "must not carry credentials, a query"),
    ({"api_key": 12345}, "api_key must be a string, got int"),
    ({"timeout": 0}, "timeout must be a positive number of seconds"),
]


@pytest.mark.parametrize(("options", "message"), CLIENT_ROWS, ids=lambda v: repr(v)[:40])
def test_a_client_with_bad_settings_is_refused_when_made(
    options: dict[str, Any], message: str
) -> None:
    settings = {"api_key": "k", **options}
    with pytest.raises(InvalidRequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Client(**settings)


def test_a_bad_base_url_in_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRAGIC_BASE_URL", "http://api.example.com")
    with pytest.raises(InvalidRequestError, match="plain http to a non-loopback host"):
        Client("k")


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.generate("a cat"),
        lambda c: c.submit("a cat"),
        lambda c: c.get_job("0b7c9d3e-0000-4000-8000-000000000000"),
        lambda c: c.resume("0b7c9d3e-0000-4000-8000-000000000000"),
    ],
    ids=["generate", "submit", "get_job", "resume"],
)
def test_missing_key_is_refused_before_any_request(
    emulator: Emulator, call: Callable[[Client], object]
) -> None:
    with Client(base_url=emulator.url, poll_schedule=FAST_POLLS) as keyless:
        assert repr(keyless) == f"Client(base_url={emulator.url!r}, api_key=not set)"
        with pytest.raises(MissingAPIKeyError) as info:
            call(keyless)
    assert str(info.value).startswith(
        "no Miragic API key: pass Client(api_key=...), set the MIRAGIC_API_KEY environment "
        "variable, or run `%miragic login` in a notebook"
    )
    assert emulator.requests == []


def test_a_blank_key_counts_as_missing(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRAGIC_API_KEY", "   ")
    with Client(base_url=emulator.url) as blank:
        assert not blank.has_api_key
        with pytest.raises(MissingAPIKeyError):
            blank.generate("a cat")
    assert emulator.requests == []


# -- the magic's line form and settings (cell options: test_magic_errors.py) -----------------------

MAGIC_LINE_ROWS: list[tuple[str, type[BaseException], str]] = [
    ("%miragic draw a cat", UsageError, "unknown subcommand 'draw'"),
    ("%miragic resume", UsageError, "%miragic resume JOB_ID [-o NAME] [--timeout S]"),
    ("%miragic resume abc extra", UsageError, "unexpected extra"),
    ("%miragic resume abc --timeout 0", UsageError, "%miragic resume JOB_ID"),
    ("%miragic resume abc -o 1x", UsageError, "%miragic resume JOB_ID"),
    ("%miragic resume ../../etc", InvalidRequestError, "job_id must be an id the API returned"),
    ("%miragic history lots", UsageError, "%miragic history [N]"),
    ("%miragic history 1 2", UsageError, "%miragic history [N]"),
    ("%miragic emulator reboot", UsageError, "%miragic emulator [start|stop|status]"),
    ("%miragic 'unclosed", UsageError, "No closing quotation"),
]


@pytest.mark.parametrize(("line", "error", "says"), MAGIC_LINE_ROWS, ids=lambda v: str(v)[:30])
def test_magic_line_refuses_bad_input(
    run: Runner, api: Emulator, line: str, error: type[BaseException], says: str
) -> None:
    cell: Run = run(line)
    assert isinstance(cell.error, error), cell.text
    assert says in cell.text
    assert "Traceback" not in cell.text
    nothing_reached(api)


def test_login_with_an_empty_key_changes_nothing(
    run: Runner, api: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("getpass.getpass", lambda prompt="": "   ")
    cell = run("%miragic login")
    assert isinstance(cell.error, UsageError)
    assert "no key entered; nothing changed" in cell.text
    nothing_reached(api)


MAGIC_CONFIG_ROWS: list[tuple[str, object, str]] = [
    ("model", "dalle", "Miragic.model must be one of flux, turbo, gptimage, kontext"),
    ("width", 100, "Miragic.width must be from 256 to 2048, got 100"),
    ("height", 4096, "Miragic.height must be from 256 to 2048, got 4096"),
    ("timeout", 0, "Miragic.timeout must be positive, got 0.0"),
    ("poll_interval", -1, "Miragic.poll_interval must be positive, got -1.0"),
    ("max_concurrency", 0, "Miragic.max_concurrency must be from 1 to 16"),
    ("progress", "fancy", "expected any of ['auto', 'widgets', 'text']"),
]


@pytest.mark.parametrize(("name", "value", "says"), MAGIC_CONFIG_ROWS)
def test_bad_magic_settings_are_refused(
    magic: Miragic, api: Emulator, name: str, value: object, says: str
) -> None:
    """What ``%config Miragic.<name> = <value>`` does (``%config`` logs the TraitError)."""
    before = getattr(magic, name)
    with pytest.raises(TraitError) as info:
        setattr(magic, name, value)
    assert says in str(info.value)
    assert getattr(magic, name) == before
    nothing_reached(api)


def test_no_key_with_a_configured_base_url_is_refused_by_the_magic(
    run: Runner, magic: Miragic, emulator: Emulator
) -> None:
    magic.base_url = emulator.url  # a real API is configured, so no offline fallback
    cell = run("%%miragic\na cat")
    assert isinstance(cell.error, MissingAPIKeyError)
    assert f"no Miragic API key and a base URL is configured ({emulator.url})" in cell.text
    assert "%miragic login" in cell.text
    assert emulator.requests == []


# -- the panel (more rows: test_panel.py) --------------------------------------------------------

PANEL_ROWS: list[tuple[dict[str, str], str, str]] = [
    ({"prompt": ""}, "prompt", "prompt must be a non-empty string"),
    ({"seed": "1.5"}, "seed", "seed must be a non-negative integer, got '1.5'"),
    ({"seed": "seven"}, "seed", "seed must be a non-negative integer, got 'seven'"),
    (
        {"model": "kontext", "image_url": "not a url"},
        "image_url",
        "image_url must be an http(s) URL, got 'not a url'",
    ),
    (
        {"model": "gptimage", "image_url": "https://example.com/in.png"},
        "image_url",
        "image_url works only with model 'kontext' (image-to-image), not 'gptimage'",
    ),
]


@pytest.mark.parametrize(("fields", "field", "says"), PANEL_ROWS, ids=lambda v: str(v)[:30])
def test_panel_refuses_bad_fields(
    panel: Panel, emulator: Emulator, fields: dict[str, str], field: str, says: str
) -> None:
    import html

    panel.prompt.value = "a valid prompt"
    for name, value in fields.items():
        getattr(panel, name).value = value
    panel.generate_button.click()
    assert says in html.unescape(panel.errors[field].value)
    assert "Nothing was sent" in panel.status.value
    assert panel.history == []
    nothing_reached(emulator)


def test_panel_fields_cannot_hold_out_of_range_values(panel: Panel) -> None:
    panel.width.value, panel.height.value = 100, 9999
    assert (panel.width.value, panel.height.value) == (256, 2048)  # clamped by the widget
    with pytest.raises(TraitError):
        panel.model.value = "sdxl"  # a dropdown holds only the four models


def test_panel_without_a_key_but_with_a_base_url_sends_nothing(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIRAGIC_BASE_URL", emulator.url)
    made = Panel()
    try:
        made.prompt.value = "no key"
        assert made.generate() is None
        assert "no Miragic API key and a base URL is configured" in made.status.value
        assert "%miragic login" in made.status.value
    finally:
        made.close()
    nothing_reached(emulator)


# -- image_url: validated, never fetched by the client ---------------------------------------


@dataclass
class _InputImageServer:
    """A tiny loopback server holding one JPEG; it records who fetched it."""

    url: str
    visitors: list[str]


@pytest.fixture
def input_image() -> Iterator[_InputImageServer]:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 320), (200, 40, 40)).save(buffer, "JPEG")
    visitors: list[str] = []

    def answer(request: BaseHTTPRequestHandler, method: str) -> tuple[str, bytes]:
        visitors.append(request.headers.get("User-Agent", ""))
        return "image/jpeg", buffer.getvalue()

    with loopback_server(answer) as url:
        yield _InputImageServer(f"{url}/in.jpg", visitors)


def test_image_url_is_never_fetched_by_the_client(
    client: Client, emulator: Emulator, input_image: _InputImageServer
) -> None:
    image = client.generate(
        "the same picture, posterised", model="kontext", image_url=input_image.url, seed=2
    )
    assert image.metadata["image_url"] == input_image.url
    assert emulator.jobs[image.metadata["job_id"]].form["image_url"] == input_image.url
    # Only the API (the emulator, for kontext) fetched it; the client sent the URL, not bytes.
    assert input_image.visitors == ["miragic-emulator"]
    create = next(r for r in emulator.requests if r.method == "POST")
    assert create.form["image_url"] == input_image.url


def test_a_refused_image_url_is_not_fetched_by_anyone(
    client: Client, emulator: Emulator, input_image: _InputImageServer
) -> None:
    with pytest.raises(InvalidRequestError, match="only with model 'kontext'"):
        client.generate("wrong model", model="flux", image_url=input_image.url)
    with pytest.raises(InvalidRequestError, match="width must be from 256 to 2048"):
        client.generate("bad size", model="kontext", image_url=input_image.url, width=10)
    assert input_image.visitors == []
    nothing_reached(emulator)
