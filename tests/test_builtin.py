"""How the notebook faces get a client: key/base-URL precedence and the built-in emulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from miragic_nb import session as builtin
from miragic_nb._core.errors import AuthenticationError, MissingAPIKeyError
from miragic_nb.emulator import Emulator

from .conftest import FAST_POLLS


@pytest.fixture(autouse=True)
def fresh_builtin() -> Iterator[None]:
    builtin.reset()
    yield
    builtin.reset()


def test_no_key_anywhere_uses_the_builtin_emulator_and_says_so_once() -> None:
    first = builtin.resolve_client(poll_schedule=FAST_POLLS)
    assert first.is_emulator
    assert first.notice == builtin.FALLBACK_NOTICE
    assert "no MIRAGIC_API_KEY" in first.notice
    assert "%miragic login" in first.notice
    emulator = builtin.builtin_emulator_running()
    assert emulator is not None
    assert first.client.base_url == emulator.url
    assert emulator.url.startswith("http://127.0.0.1:")
    second = builtin.resolve_client(poll_schedule=FAST_POLLS)
    assert second.notice is None
    assert second.client is first.client  # same settings: the connection pool is reused
    assert builtin.builtin_emulator_running() is emulator  # started once per process


def test_builtin_emulator_images_are_labelled(tmp_path_factory: pytest.TempPathFactory) -> None:
    resolved = builtin.resolve_client(poll_schedule=FAST_POLLS, timeout=20)
    emulator = builtin.builtin_emulator_running()
    assert emulator is not None
    emulator.job_seconds = 0.2
    image = resolved.client.generate("a lighthouse", width=256, height=256, seed=5)
    assert image.metadata["emulator"] is True
    assert "emulator (placeholder image)" in image.caption()
    reused = resolved.client.generate("a lighthouse", width=256, height=256, seed=5)
    assert reused.metadata.get("reused") is True
    assert reused.metadata["emulator"] is True
    assert emulator.count("POST") == 1


def test_the_builtin_key_is_random_and_in_no_repr() -> None:
    resolved = builtin.resolve_client()
    emulator = builtin.builtin_emulator_running()
    assert emulator is not None
    assert emulator.api_key not in (repr(resolved.client), repr(resolved))
    assert emulator.api_key != "emulator-key"


def test_a_key_in_the_environment_wins(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRAGIC_API_KEY", emulator.api_key)
    monkeypatch.setenv("MIRAGIC_BASE_URL", emulator.url)
    resolved = builtin.resolve_client(poll_schedule=FAST_POLLS)
    assert not resolved.is_emulator
    assert resolved.notice is None
    assert resolved.client.base_url == emulator.url
    assert builtin.key_source() == "MIRAGIC_API_KEY"
    assert emulator.api_key not in repr(resolved)
    assert builtin.builtin_emulator_running() is None
    assert resolved.client.generate("ok", width=256, height=256).metadata.get("emulator") is None


def test_session_key_beats_the_environment(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIRAGIC_API_KEY", "a-stale-key")
    monkeypatch.setenv("MIRAGIC_BASE_URL", emulator.url)
    with pytest.raises(AuthenticationError):
        builtin.resolve_client(poll_schedule=FAST_POLLS).client.get_job("nope")
    builtin.set_session_key(f"  {emulator.api_key}  ")
    resolved = builtin.resolve_client(poll_schedule=FAST_POLLS)
    assert builtin.key_source() == "%miragic login (this session)"
    job = resolved.client.submit("with the session key", width=256, height=256)
    assert job.id in emulator.jobs
    builtin.clear_session_key()
    assert builtin.key_source() == "MIRAGIC_API_KEY"


def test_an_explicit_key_and_base_url_win_over_everything(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIRAGIC_API_KEY", "env-key")
    monkeypatch.setenv("MIRAGIC_BASE_URL", "http://127.0.0.1:9")
    builtin.set_session_key("session-key")
    resolved = builtin.resolve_client(api_key=emulator.api_key, base_url=emulator.url)
    assert resolved.client.base_url == emulator.url
    assert resolved.client.submit("explicit", width=256, height=256).id in emulator.jobs


def test_an_empty_session_key_is_refused() -> None:
    with pytest.raises(MissingAPIKeyError, match="empty"):
        builtin.set_session_key("   ")
    assert builtin.key_source() != "%miragic login (this session)"


@pytest.mark.parametrize("how", ["argument", "env"])
def test_without_the_fallback_a_missing_key_says_how_to_provide_one(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if how == "env":
        monkeypatch.setenv("MIRAGIC_OFFLINE_FALLBACK", "0")
    with pytest.raises(MissingAPIKeyError) as caught:
        builtin.resolve_client(offline_fallback=how != "argument")
    message = str(caught.value)
    assert "MIRAGIC_API_KEY" in message
    assert "%miragic login" in message
    assert builtin.builtin_emulator_running() is None


def test_a_configured_base_url_without_a_key_is_an_error_not_the_emulator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MIRAGIC_BASE_URL", "https://api.example.org")
    with pytest.raises(MissingAPIKeyError, match="base URL is configured"):
        builtin.resolve_client()
    assert builtin.builtin_emulator_running() is None


def test_explicit_emulator_start_wins_until_stopped(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIRAGIC_API_KEY", emulator.api_key)
    monkeypatch.setenv("MIRAGIC_BASE_URL", emulator.url)
    started = builtin.start_builtin_emulator()
    resolved = builtin.resolve_client()
    assert resolved.is_emulator
    assert resolved.client.base_url == started.url
    assert resolved.notice is None  # chosen on purpose: no fallback notice
    assert builtin.stop_builtin_emulator() is True
    assert builtin.stop_builtin_emulator() is False
    assert not builtin.resolve_client().is_emulator


def test_login_ends_an_explicit_emulator_session() -> None:
    builtin.start_builtin_emulator()
    builtin.set_session_key("real-key")
    assert not builtin.resolve_client().is_emulator


def test_changed_settings_give_a_new_client_and_same_settings_the_same() -> None:
    a = builtin.resolve_client(timeout=10).client
    b = builtin.resolve_client(timeout=10).client
    c = builtin.resolve_client(timeout=20).client
    assert a is b
    assert c is not a


def test_seeded_results_of_the_builtin_emulator_are_reused_after_a_restart() -> None:
    first = builtin.resolve_client(poll_schedule=FAST_POLLS, timeout=20)
    before = builtin.builtin_emulator_running()
    assert before is not None
    before.job_seconds = 0.2
    image = first.client.generate("a lighthouse", width=256, height=256, seed=5)
    # As after a kernel restart: the emulator comes back on another port, with another key.
    builtin.reset()
    again = builtin.resolve_client(poll_schedule=FAST_POLLS, timeout=20)
    after = builtin.builtin_emulator_running()
    assert after is not None
    assert after is not before  # a new emulator (its port is whatever the OS gives)
    reused = again.client.generate("a lighthouse", width=256, height=256, seed=5)
    assert reused.metadata.get("reused") is True
    assert reused.metadata["job_id"] == image.metadata["job_id"]
    assert after.count("POST") == 0
    # Unseeded requests still make new pictures.
    after.job_seconds = 0.2
    again.client.generate("a lighthouse", width=256, height=256)
    assert after.count("POST") == 1
