"""The session budget: ``%config Miragic.max_credits = N`` counted in the store's ledger, in a
real IPython shell against the emulator; a cell past it is refused in one line, sending
nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from IPython.core.interactiveshell import InteractiveShell

from miragic_nb._core.errors import BudgetExceededError
from miragic_nb._engine.batch import BatchResult
from miragic_nb._magic.magic import Miragic
from miragic_nb._store.batches import BatchStore
from miragic_nb.client import Client
from miragic_nb.emulator import Emulator

if TYPE_CHECKING:
    from .magic_fixtures import Runner

pytest_plugins = ["tests.magic_fixtures"]  # the ip, magic, api and run fixtures

CREATE = "/api/v1/image/generate"


def test_a_cell_past_the_session_budget_is_refused_before_any_request(
    run: Runner, ip: InteractiveShell, magic: Miragic, api: Emulator
) -> None:
    ip.run_line_magic("config", "Miragic.max_credits = 3")
    assert magic.max_credits == 3
    first = run("%%miragic --n 2 -W 256 -H 256\nfirst")
    assert first.error is None, first.text
    history = magic._resolve().client.history
    assert history is not None
    assert BatchStore(history).spent() == 2
    refused = run("%%miragic --n 2 -W 256 -H 256\nsecond")
    assert isinstance(refused.error, BudgetExceededError)
    rendered = refused.error._render_traceback_()  # type: ignore[attr-defined]
    assert len(rendered) == 1
    assert "2 of Miragic.max_credits = 3 credits spent" in rendered[0]
    assert api.count("POST", CREATE) == 2
    # One more still fits.
    last = run("%%miragic -W 256 -H 256\nthird")
    assert last.error is None, last.text
    assert api.count("POST", CREATE) == 3
    assert isinstance(run("%%miragic -W 256 -H 256\nfourth").error, BudgetExceededError)
    assert api.count("POST", CREATE) == 3


def test_without_a_budget_the_ledger_still_counts(
    run: Runner, magic: Miragic, api: Emulator
) -> None:
    assert magic.max_credits is None
    assert run("%%miragic -W 256 -H 256\nfree").error is None
    history = magic._resolve().client.history
    assert history is not None
    assert BatchStore(history).spent() == 1


def test_a_batch_in_the_notebook_keeps_to_the_session_budget(
    run: Runner, ip: InteractiveShell, magic: Miragic, api: Emulator
) -> None:
    ip.run_line_magic("config", "Miragic.max_credits = 2")
    assert run("%%miragic -W 256 -H 256\none").error is None
    with Client(api.api_key, api.url) as client:
        with pytest.raises(BudgetExceededError, match=r"1 of Miragic\.max_credits = 2"):
            client.generate_many(["two", "three"])
        assert api.count("POST", CREATE) == 1
        result = client.generate_many([{"prompt": "two", "width": 256, "height": 256}])
        assert isinstance(result, BatchResult)
        assert result.created == 1
        history = client.history
        assert history is not None
        assert BatchStore(history).spent() == 2


def test_the_session_cap_counts_every_face_and_refuses_before_any_request(
    run: Runner, ip: InteractiveShell, magic: Miragic, api: Emulator
) -> None:
    import asyncio

    import miragic_nb

    ip.run_line_magic("config", "Miragic.max_credits = 2")
    # miragic_nb.generate takes the session's client: the magic's settings, this emulator.
    assert miragic_nb.generate("one", width=256, height=256).size == (256, 256)
    assert miragic_nb.generate("two", width=256, height=256).size == (256, 256)
    assert api.count("POST", CREATE) == 2
    with pytest.raises(BudgetExceededError, match=r"2 of Miragic\.max_credits = 2"):
        miragic_nb.generate("three", width=256, height=256)
    refused = run("%%miragic -W 256 -H 256\nfour")
    assert isinstance(refused.error, BudgetExceededError)
    # A client of the user's own, and agenerate, keep to the same cap.
    with Client(api.api_key, api.url) as client:
        with pytest.raises(BudgetExceededError):
            client.generate("five", width=256, height=256)
        with pytest.raises(BudgetExceededError):
            asyncio.run(client.agenerate("six", width=256, height=256))
        with pytest.raises(BudgetExceededError):
            client.submit("seven", width=256, height=256)
    assert api.count("POST", CREATE) == 2
    # Raising the cap lets the next job through, whatever the face.
    ip.run_line_magic("config", "Miragic.max_credits = 3")
    assert miragic_nb.generate("eight", width=256, height=256).size == (256, 256)
    assert api.count("POST", CREATE) == 3


def test_unloading_the_extension_lifts_the_cap(
    ip: InteractiveShell, magic: Miragic, api: Emulator
) -> None:
    from miragic_nb._engine import budget
    from miragic_nb._magic.magic import load_ipython_extension, unload_ipython_extension

    ip.run_line_magic("config", "Miragic.max_credits = 0")
    assert budget.session_limit() == 0
    unload_ipython_extension(ip)
    assert budget.session_limit() is None
    load_ipython_extension(ip)  # the fixture unloads it again


def test_jobs_on_the_built_in_emulator_cost_nothing(
    run: Runner, ip: InteractiveShell, magic: Miragic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MIRAGIC_API_KEY", raising=False)
    monkeypatch.delenv("MIRAGIC_BASE_URL", raising=False)
    ip.run_line_magic("config", "Miragic.max_credits = 1")
    for prompt in ("placeholder one", "placeholder two"):
        done = run(f"%%miragic -W 256 -H 256\n{prompt}")
        assert done.error is None, done.text
    resolved = magic._resolve()
    assert resolved.is_emulator
    history = resolved.client.history
    assert history is not None
    assert BatchStore(history).spent() == 0
