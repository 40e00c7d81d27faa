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
