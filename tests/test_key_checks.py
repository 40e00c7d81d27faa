"""A malformed key is refused where it enters, without showing it; nothing holding a key pickles.

A key with a line break in it used to reach the HTTP layer, whose ``Invalid header value``
error printed it (into the progress line, the traceback and the saved notebook). Every way a
key comes in (``Client(api_key=...)``, ``MIRAGIC_API_KEY``, ``%miragic login``, the panel) now
checks it first: printable ASCII, no whitespace or control characters. The messages are
searched for every run of four characters of the key.
"""

from __future__ import annotations

import copy
import pickle
import traceback
from typing import TYPE_CHECKING

import pytest
from IPython.core.interactiveshell import InteractiveShell

from miragic_nb import Client, InvalidRequestError
from miragic_nb import session as builtin
from miragic_nb._core.config import Secret
from miragic_nb._panel.panel import Panel
from miragic_nb.emulator import Emulator
from miragic_nb.session import resolve_client

if TYPE_CHECKING:
    from tests.magic_fixtures import Runner

pytest_plugins = ["tests.magic_fixtures"]

BAD_KEYS = [
    "mk-9Q7Z\r\nX-Evil-Hdr: 1x2y",  # a header smuggled after a line break
    "mk-9Q7Z\n4Rt8",  # a line break pasted inside
    "mk-9Q7Z 4Rt8",  # a space
    "mk-9Q7Z\t4Rt8",  # a tab
    "mk-9Q7Z\x004Rt8",  # a NUL
    "mk-9Q7Z\x7f4Rt8",  # DEL
    "mk-9Q7Z\u00a04Rt8",  # a no-break space
    "mk-9Q7Z-ключ-4Rt8",  # not ASCII
]
#: An environment variable cannot hold a NUL.
ENV_KEYS = [key for key in BAD_KEYS if "\x00" not in key]
ALLOWED = "must be printable ASCII with no spaces, line breaks or other control characters"


def shows_part_of(text: str, key: str) -> str | None:
    """The first run of four characters of ``key`` found in ``text`` (skipping whitespace)."""
    for start in range(len(key) - 3):
        part = key[start : start + 4]
        if part.strip() == part and part in text:
            return part
    return None


def everything_shown(error: BaseException) -> str:
    """The error, and its traceback with every frame's locals below the test's own frame."""
    assert error.__traceback__ is not None
    below_the_test = error.__traceback__.tb_next
    with_locals = traceback.TracebackException(
        type(error), error, below_the_test, capture_locals=True
    )
    return str(error) + repr(error.args) + "".join(with_locals.format())


@pytest.mark.parametrize("key", BAD_KEYS)
def test_client_refuses_a_malformed_key_without_showing_it(emulator: Emulator, key: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        Client(api_key=key, base_url=emulator.url)
    assert refused.value.field == "api_key"
    assert str(refused.value).startswith(f"api_key {ALLOWED}")
    assert shows_part_of(str(refused.value) + repr(refused.value.args), key) is None
    assert emulator.requests == []


@pytest.mark.parametrize("key", ENV_KEYS)
def test_a_malformed_key_in_the_environment_is_refused_without_showing_it(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    monkeypatch.setenv("MIRAGIC_API_KEY", key)
    for make in (lambda: Client(base_url=emulator.url), lambda: resolve_client()):
        with pytest.raises(InvalidRequestError) as refused:
            make()
        assert str(refused.value).startswith(f"MIRAGIC_API_KEY {ALLOWED}")
        # Also in every frame's locals, as IPython's verbose mode prints them.
        assert shows_part_of(everything_shown(refused.value), key) is None
    assert emulator.requests == []


def test_surrounding_whitespace_is_still_trimmed(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIRAGIC_API_KEY", f"  {emulator.api_key}\n")
    with Client(base_url=emulator.url) as client:
        assert client.generate("a key read from a file with its newline", width=256, height=256)


def test_the_magic_refuses_a_malformed_key_in_one_line_and_sends_nothing(
    run: Runner, api: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = BAD_KEYS[0]
    monkeypatch.setenv("MIRAGIC_API_KEY", key)
    cell = run("%%miragic -W 256 -H 256\na cat")
    assert isinstance(cell.error, InvalidRequestError)
    lines = [line for line in cell.text.splitlines() if line.strip()]
    assert lines == [
        f"InvalidRequestError: MIRAGIC_API_KEY {ALLOWED}; it has others (a pasted "
        "line break?), so it was not used and nothing was sent"
    ]
    assert shows_part_of(cell.text + repr(cell.outputs), key) is None
    assert api.requests == []


@pytest.mark.parametrize("key", BAD_KEYS[:2])
def test_login_refuses_a_malformed_key_and_keeps_none(
    run: Runner, api: Emulator, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    monkeypatch.setattr("getpass.getpass", lambda prompt="": key)
    cell = run("%miragic login")
    assert isinstance(cell.error, InvalidRequestError)
    assert f"the API key {ALLOWED}" in cell.text
    assert shows_part_of(cell.text, key) is None
    assert builtin.key_source() != "%miragic login (this session)"
    assert api.requests == []


def test_the_panel_refuses_a_malformed_key_in_its_status(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = BAD_KEYS[0]
    monkeypatch.setenv("MIRAGIC_API_KEY", key)
    monkeypatch.setenv("MIRAGIC_BASE_URL", emulator.url)
    made = Panel()
    try:
        made.prompt.value = "a cat"
        assert made.generate() is None
        assert f"MIRAGIC_API_KEY {ALLOWED}" in made.status.value
        assert shows_part_of(made.status.value, key) is None
    finally:
        made.close()
    assert emulator.requests == []


# -- pickling ------------------------------------------------------------------------------------

KEY = "mk-live-PICKLE-5e6f7a"


def key_holders(emulator: Emulator) -> list[object]:
    """Everything that holds the key: the Secret, the client, its session, auth and a header."""
    client = Client(KEY, emulator.url)
    auth = client.api._session.auth
    assert auth is not None
    headers = auth(client.api._session.prepare_request(_request(client))).headers
    return [Secret(KEY), client, client.api._session, auth, headers["X-API-Key"], headers]


def _request(client: Client) -> object:
    import requests

    return requests.Request("GET", client.base_url + "/api/v1/image/jobs/x")


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_nothing_that_holds_the_key_can_be_pickled(emulator: Emulator, protocol: int) -> None:
    for holder in key_holders(emulator):
        with pytest.raises(TypeError, match="holds the Miragic API key, so it cannot be pickled"):
            pickle.dumps(holder, protocol)


def test_a_resolved_client_cannot_be_pickled_either(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIRAGIC_API_KEY", KEY)
    monkeypatch.setenv("MIRAGIC_BASE_URL", emulator.url)
    resolved = resolve_client()
    with pytest.raises(TypeError, match="Client holds the Miragic API key"):
        pickle.dumps(resolved)


def test_copying_a_key_keeps_it_in_memory_and_a_client_is_not_copied(emulator: Emulator) -> None:
    """Chosen behaviour: a Secret (immutable) copies as itself; a Client (connections, history,
    key) refuses copy and deepcopy like pickle (they go through the same protocol): share the
    client instead."""
    secret = Secret(KEY)
    assert copy.deepcopy(secret) is secret
    assert copy.copy(secret) is secret
    assert copy.deepcopy({"key": secret})["key"] is secret
    client = Client(secret, emulator.url)
    for copier in (copy.copy, copy.deepcopy):
        with pytest.raises(TypeError, match="Client holds the Miragic API key") as refused:
            copier(client)
        assert KEY not in str(refused.value)


def test_pickling_an_image_or_an_error_still_works(client: Client) -> None:
    """What a user keeps (results, errors) holds no key, and stays picklable."""
    image = client.generate("picklable", width=256, height=256)
    assert pickle.loads(pickle.dumps(image)).info["miragic"] == image.metadata
    error = InvalidRequestError("bad", field="prompt")
    assert str(pickle.loads(pickle.dumps(error))) == "bad"


def test_the_shell_keeps_no_key_holder_in_a_pickled_namespace(
    ip: InteractiveShell, run: Runner, api: Emulator
) -> None:
    """``%store``-style persistence pickles user variables: a result and its metadata do."""
    assert run("%%miragic -W 256 -H 256 -o t_kept\na cat").error is None
    data = pickle.dumps(ip.user_ns["t_kept"])
    assert api.api_key.encode() not in data
