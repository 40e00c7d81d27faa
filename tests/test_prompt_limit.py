"""Prompts too long to be read back are refused before any request, in every face.

The job record echoes the prompt twice and an answer may be at most 1 MiB: a 479 kB prompt
used to be accepted and paid for, and every status read of its job then failed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from IPython.core.error import UsageError

from miragic_nb import Client, GenerationRequest, InvalidRequestError
from miragic_nb.__main__ import main
from miragic_nb._panel.panel import Panel
from miragic_nb.emulator import Emulator
from tests.api.test_hostile_client import hostile_client
from tests.hostile_servers import ScriptedApi, status_answer

if TYPE_CHECKING:
    from tests.magic_fixtures import Runner

pytest_plugins = ["tests.magic_fixtures"]

#: The prompt of the report: 479 kB.
LONG = "a" * 479_000
SAYS = "prompt is 479,000 characters; at most 20,000 can be sent"
#: The limit (miragic_nb._core.request.MAX_PROMPT_CHARS).
MAX_PROMPT_CHARS = 20_000


def test_python_refuses_it_before_any_request(client: Client, emulator: Emulator) -> None:
    with pytest.raises(InvalidRequestError, match=SAYS) as refused:
        client.generate(LONG)
    assert refused.value.field == "prompt"
    with pytest.raises(InvalidRequestError, match=SAYS):
        GenerationRequest(LONG)
    assert emulator.requests == []


def test_the_magic_refuses_the_cell_body(run: Runner, api: Emulator) -> None:
    cell = run("%%miragic -W 256 -H 256\n" + LONG)
    assert isinstance(cell.error, UsageError)
    assert f"%%miragic: {SAYS}" in str(cell.error)
    assert api.requests == []


def test_the_panel_shows_it_beside_the_prompt_field(client: Client, emulator: Emulator) -> None:
    panel = Panel(client)
    try:
        panel.prompt.value = LONG
        assert panel.generate() is None
        assert SAYS in panel.errors["prompt"].value
    finally:
        panel.close()
    assert emulator.requests == []


def test_the_cli_names_the_line(
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MIRAGIC_API_KEY", emulator.api_key)
    monkeypatch.setenv("MIRAGIC_BASE_URL", emulator.url)
    source = tmp_path / "p.txt"
    source.write_text("a short one\n" + LONG + "\n")
    assert main(["batch", str(source), "--out", str(tmp_path / "out")]) == 2
    assert f"p.txt line 2: {SAYS}" in capsys.readouterr().err
    assert emulator.requests == []


def test_the_longest_prompt_allowed_is_read_back_in_its_widest_spelling() -> None:
    # Astral characters: 12 bytes each in escaped JSON (a surrogate pair), the widest.
    prompt = "🦊" * MAX_PROMPT_CHARS
    echo = status_answer(prompt=prompt, parameters={"prompt": prompt, "model": "flux"})
    assert len(echo) < 1024 * 1024  # the answer cap
    with ScriptedApi(statuses=[echo]) as api:
        with hostile_client(api) as client:
            image = client.generate(prompt)
    assert image.metadata["prompt"] == prompt
