"""Input the magic (and the client) used to accept or crash on, refused in one line, sent nowhere.

In a real IPython shell: ``-o`` names the shell itself needs, digits ``int`` cannot read, a
lone surrogate in the prompt, and a key typed after ``%miragic login``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from PIL import Image

from miragic_nb import Client, GenerationRequest, InvalidRequestError
from miragic_nb import session as builtin
from miragic_nb.emulator import Emulator
from tests.test_magic_errors import assert_one_short_line

if TYPE_CHECKING:
    from tests.magic_fixtures import Runner

pytest_plugins = ["tests.magic_fixtures"]

OWN_NAME = "must be a Python variable name of your own"
SHELL_NAMES = [
    "get_ipython",
    "exit",
    "quit",
    "In",
    "Out",
    "_",
    "__",
    "___",
    "_i",
    "_ii",
    "_i3",
    "_ih",
    "_oh",
    "_dh",
    "_3",
    "__name__",
    "print",
    "len",
    "class",
    "1bad",
    "a-b",
]


@pytest.mark.parametrize("name", SHELL_NAMES)
def test_out_refuses_names_the_shell_needs(
    run: Runner, ip: InteractiveShell, api: Emulator, name: str
) -> None:
    before = ip.user_ns.get(name)
    cell = run(f"%%miragic -W 256 -H 256 -o {name}\na cat")
    assert isinstance(cell.error, UsageError)
    line = assert_one_short_line(cell, "UsageError: %%miragic", OWN_NAME, repr(name))
    assert "get_ipython, exit, quit, In, Out" in line  # what is not allowed, by name
    assert api.requests == []
    if name.startswith("_i"):  # the shell itself rewrites its input history at every cell
        assert not isinstance(ip.user_ns.get(name), Image.Image)
    else:
        assert ip.user_ns.get(name) is before
    assert run("%miragic models").error is None  # the shell still works


def test_out_still_takes_an_ordinary_name(run: Runner, ip: InteractiveShell, api: Emulator) -> None:
    assert run("%%miragic -W 256 -H 256 -o t_image\na cat").error is None
    assert ip.user_ns["t_image"].metadata["prompt"] == "a cat"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("%miragic history ²", "%miragic history [N]"),
        ("%miragic history ٣", "%miragic history [N]"),
        ("%%miragic --seed ²\na cat", "must be a non-negative integer, got '²'"),
        ("%%miragic --n ³\na cat", "must be an integer from 1 to 64, got '³'"),
        ("%%miragic -W ²⁵⁶\na cat", "must be an integer from 256 to 2048, got '²⁵⁶'"),
    ],
)
def test_digits_int_cannot_read_are_refused_in_one_line(
    run: Runner, api: Emulator, line: str, message: str
) -> None:
    cell = run(line)
    assert isinstance(cell.error, UsageError)
    assert_one_short_line(cell, message)
    assert api.requests == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"width": "²⁵⁶"}, "width must be an integer from 256 to 2048, got '²⁵⁶'"),
        ({"seed": "²"}, "seed must be a non-negative integer, got '²'"),
        ({"prompt": "a cat \ud800"}, "prompt has a lone surrogate ('\\ud800' at position 6)"),
        (
            {"model": "kontext", "image_url": "https://example.com/\udcff.png"},
            "image_url has a lone surrogate",
        ),
    ],
)
def test_the_client_refuses_unsendable_text_before_any_request(
    client: Client, emulator: Emulator, options: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {"prompt": "a cat", **options}
    with pytest.raises(InvalidRequestError) as refused:
        client.generate(**arguments)  # type: ignore[arg-type]
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)
    with pytest.raises(InvalidRequestError):
        GenerationRequest(**arguments)  # type: ignore[arg-type]
    assert emulator.requests == []


def test_a_lone_surrogate_in_the_prompt_is_one_line_in_the_magic(
    run: Runner, ip: InteractiveShell, api: Emulator
) -> None:
    ip.user_ns["t_half_emoji"] = "\ud83d"  # the first half of a surrogate pair
    cell = run("%%miragic -W 256 -H 256\na cat {t_half_emoji}")
    assert isinstance(cell.error, UsageError)
    assert_one_short_line(cell, "UsageError: %%miragic: prompt has a lone surrogate")
    assert api.requests == []


@pytest.mark.parametrize(
    "typed", ["sk-live-TYPED-4b3c2d", "'sk-live-TYPED-4b3c2d", "sk live TYPED 4b3c2d"]
)
def test_login_refuses_a_key_typed_on_the_command_line(
    run: Runner, api: Emulator, monkeypatch: pytest.MonkeyPatch, typed: str
) -> None:
    def no_prompt(prompt: str = "") -> str:
        raise AssertionError("the key on the line must not lead to a prompt")

    monkeypatch.setattr("getpass.getpass", no_prompt)
    cell = run(f"%miragic login {typed}")
    assert isinstance(cell.error, UsageError)
    line = assert_one_short_line(cell, "UsageError: %miragic login takes no argument")
    assert "kept in the shell's history" in line
    assert "%miragic login alone" in line
    assert "MIRAGIC_API_KEY" in line
    for part in typed.strip("'").replace("-", " ").split():
        assert part not in line.replace("%miragic login", "")
    assert builtin.key_source() != "%miragic login (this session)"
    assert api.requests == []
