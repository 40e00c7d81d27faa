"""Shared fixtures: an emulator on loopback, a client pointed at it, and a clean environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from miragic_nb.client import Client
from miragic_nb.emulator import Emulator
from miragic_nb.polling import PollSchedule

#: A poll schedule for tests: dense polling, so short jobs finish fast.
FAST_POLLS = PollSchedule(initial_delay=0.02, growth=1.3, max_delay=0.2, min_delay=0.01)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's key, base URL or history."""
    for name in ("MIRAGIC_API_KEY", "MIRAGIC_BASE_URL", "MIRAGIC_OFFLINE_FALLBACK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MIRAGIC_HOME", str(tmp_path / "miragic-home"))


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(api_key="test-key-0123456789", job_seconds=0.3) as emu:
        yield emu


@pytest.fixture
def client(emulator: Emulator) -> Iterator[Client]:
    with Client(
        api_key=emulator.api_key, base_url=emulator.url, poll_schedule=FAST_POLLS, timeout=20
    ) as c:
        yield c
