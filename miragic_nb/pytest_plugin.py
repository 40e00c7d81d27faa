"""pytest fixtures for testing code that uses miragic-nb, registered as a ``pytest11`` plugin.

Installing miragic-nb is enough: no conftest, no import. Every fixture is function-scoped and
talks to a fresh emulator on loopback, so tests need no key, no network and spend no credits::

    def test_caption(miragic_client):
        image = miragic_client.generate("a red bicycle", seed=7)
        assert image.metadata["seed"] == 7

    def test_retry(miragic_emulator, miragic_client):
        from miragic_nb.emulator import Fault
        miragic_emulator.faults.push("status", Fault.http(503), times=2)
        ...

pytest loads this module in every session of everyone who has the package installed, so it
imports nothing heavy itself: the emulator, requests and Pillow load when a fixture is used.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from miragic_nb.client import Client
    from miragic_nb.emulator import Emulator

#: How long an emulated job takes in the fixtures: long enough to be polled, short for a suite.
JOB_SECONDS = 0.2


@pytest.fixture
def miragic_emulator() -> Iterator[Emulator]:
    """A running emulator of the Miragic API on 127.0.0.1, stopped after the test.

    ``.url`` and ``.api_key`` are what a client needs; ``.faults`` injects failures
    (``docs/emulator.md``); ``.requests`` and ``.count()`` tell what the code under test sent.
    Jobs take 0.2 s; set ``miragic_emulator.job_seconds`` to change that.
    """
    from miragic_nb.emulator import Emulator

    emulator = Emulator(api_key="pytest-" + secrets.token_hex(12), job_seconds=JOB_SECONDS)
    with emulator:
        yield emulator


@pytest.fixture
def miragic_home(tmp_path: Path) -> Path:
    """The job history directory the fixtures use: a fresh folder inside ``tmp_path``."""
    return tmp_path / "miragic-home"


@pytest.fixture
def miragic_client(miragic_emulator: Emulator, miragic_home: Path) -> Iterator[Client]:
    """A ``Client`` bound to ``miragic_emulator``, recording its jobs in ``miragic_home``."""
    from miragic_nb._core.polling import PollSchedule
    from miragic_nb._store.history import History
    from miragic_nb.client import Client

    # Dense polling: the fixture's jobs are short, and a suite should not wait on them.
    polls = PollSchedule(initial_delay=0.02, growth=1.3, max_delay=0.2, min_delay=0.01)
    with Client(
        api_key=miragic_emulator.api_key,
        base_url=miragic_emulator.url,
        poll_schedule=polls,
        history=History(miragic_home),
        timeout=30,
    ) as client:
        yield client


@pytest.fixture
def miragic_env(
    miragic_emulator: Emulator, miragic_home: Path, monkeypatch: pytest.MonkeyPatch
) -> Emulator:
    """Point code that builds its own client from the environment at ``miragic_emulator``.

    Sets ``MIRAGIC_API_KEY``, ``MIRAGIC_BASE_URL`` and ``MIRAGIC_HOME`` for the test (undone
    afterwards), so ``Client()`` and ``miragic_nb.generate`` reach the emulator.
    """
    from miragic_nb._core import config
    from miragic_nb._store.history import ENV_HOME

    monkeypatch.setenv(config.ENV_API_KEY, miragic_emulator.api_key)
    monkeypatch.setenv(config.ENV_BASE_URL, miragic_emulator.url)
    monkeypatch.setenv(ENV_HOME, str(miragic_home))
    return miragic_emulator
