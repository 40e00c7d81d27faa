"""The session: the one place a client is built from settings, for every face.

The magic, the panel, ``miragic_nb.generate``, the batch command and the app all take their
client here (``resolve``, ``default_client``). When the extension loads, the magic attaches its
``%config Miragic.*`` settings (``attach``), so the panel and ``generate`` use them too, and its
``max_credits`` becomes the session's credit cap, which the engine checks before every job of
every face.

Precedence, decided when a cell runs (so setting ``MIRAGIC_API_KEY`` later works):

- key: explicit argument > ``%miragic login`` session key > ``MIRAGIC_API_KEY``;
- base URL: explicit argument > ``MIRAGIC_BASE_URL`` > the public API.

When no key and no base URL are configured anywhere, and the offline fallback is on (off with
``offline_fallback=False`` or ``MIRAGIC_OFFLINE_FALLBACK=0``), the faces use the **built-in
emulator**: one per process, started lazily on loopback with a random key, stopped at exit.
Its images carry ``info["miragic"]["emulator"] = True``.

The session key lives in this module's memory only; it is never written anywhere. Every face
resolves from the same ``Settings`` (the magic's ``%config Miragic.*``), and deciding whether
the emulator would be used (``uses_emulator``) starts nothing.
"""

from __future__ import annotations

import atexit
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from miragic_nb._core import config
from miragic_nb._core.errors import MissingAPIKeyError
from miragic_nb._engine import budget
from miragic_nb.client import Client

if TYPE_CHECKING:
    from miragic_nb._core.polling import PollSchedule
    from miragic_nb._store.history import History
    from miragic_nb.emulator import Emulator

ENV_OFFLINE_FALLBACK = "MIRAGIC_OFFLINE_FALLBACK"
#: Seconds each built-in emulator job takes: long enough to see the progress bar.
BUILTIN_JOB_SECONDS = 2.0
FALLBACK_NOTICE = (
    "no MIRAGIC_API_KEY: using the offline emulator, placeholder images; "
    "`%miragic login` to use Miragic"
)
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})
_CLIENT_CACHE_SIZE = 8

_lock = threading.RLock()
# Held as Secrets, so no repr, log or traceback's captured locals shows a key.
_session_key: config.Secret | None = None
_prefer_emulator = False
_emulator: Emulator | None = None
_notice_given = False
_clients: OrderedDict[tuple[Any, ...], Client] = OrderedDict()
# The loaded extension's settings (``%config Miragic.*``), read when a face needs a client.
_settings_source: Callable[[], Settings] | None = None


@dataclass(frozen=True)
class Settings:
    """What every face resolves its client from: the magic's ``%config Miragic.*`` values, or
    the defaults (empty ``base_url``/``home``: ``MIRAGIC_BASE_URL``/``MIRAGIC_HOME``, else
    the built-in defaults)."""

    base_url: str | None = None
    home: str | None = None
    timeout: float = config.DEFAULT_JOB_TIMEOUT_S
    offline_fallback: bool = True
    poll_schedule: PollSchedule | None = None


@dataclass(frozen=True)
class ResolvedClient:
    """A client for a face, and whether it is the built-in emulator's.

    ``notice`` is the one-time fallback message: set on the first resolution in this process
    that fell back to the built-in emulator, ``None`` afterwards; the face shows it.
    """

    client: Client
    is_emulator: bool
    notice: str | None = None


# -- the session key (%miragic login) --------------------------------------------------------


def set_session_key(key: str) -> None:
    """Use ``key`` for this process (``%miragic login``); it wins over ``MIRAGIC_API_KEY``."""
    global _session_key, _prefer_emulator
    checked = config.check_api_key(key, source="the API key")
    if checked is None:
        raise MissingAPIKeyError("the API key is empty; nothing was changed", field="api_key")
    with _lock:
        _session_key = config.Secret(checked)
        _prefer_emulator = False


def clear_session_key() -> None:
    global _session_key
    with _lock:
        _session_key = None


# -- the built-in emulator ---------------------------------------------------------------------


def builtin_emulator() -> Emulator:
    """The process's built-in emulator, started on first use (loopback, random key)."""
    global _emulator
    with _lock:
        if _emulator is None:
            from miragic_nb.emulator import Emulator

            emulator = Emulator(
                api_key="builtin-" + secrets.token_urlsafe(16),
                job_seconds=BUILTIN_JOB_SECONDS,
                host="127.0.0.1",
                port=0,
            )
            emulator.start()
            atexit.register(_stop_at_exit, emulator)
            _emulator = emulator
        return _emulator


def builtin_emulator_running() -> Emulator | None:
    """The built-in emulator if it is running, without starting it."""
    return _emulator


def start_builtin_emulator() -> Emulator:
    """Start the built-in emulator (if needed) and use it for this session, key or not."""
    global _prefer_emulator
    with _lock:
        emulator = builtin_emulator()
        _prefer_emulator = True
        return emulator


def stop_builtin_emulator() -> bool:
    """Stop the built-in emulator; True when one was running. A later fallback starts anew."""
    global _emulator, _prefer_emulator
    with _lock:
        emulator, _emulator = _emulator, None
        _prefer_emulator = False
        for key in [k for k in _clients if k[0] == "builtin"]:
            _clients.pop(key).close()
    if emulator is None:
        return False
    emulator.stop()
    return True


def _stop_at_exit(emulator: Emulator) -> None:
    if emulator is _emulator:
        stop_builtin_emulator()


# -- resolution ---------------------------------------------------------------------------------


def fallback_enabled(offline_fallback: bool = True) -> bool:
    """The fallback is on unless the caller or ``MIRAGIC_OFFLINE_FALLBACK=0`` turns it off."""
    env = os.environ.get(ENV_OFFLINE_FALLBACK, "").strip().lower()
    return offline_fallback and env not in _FALSE_WORDS


def resolve_client(
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    offline_fallback: bool = True,
    timeout: float = config.DEFAULT_JOB_TIMEOUT_S,
    poll_schedule: PollSchedule | None = None,
    home: str | os.PathLike[str] | None = None,
) -> ResolvedClient:
    """The client a cell should use now; see the module docstring for the precedence.

    Raises ``MissingAPIKeyError`` (saying how to provide a key) when no key is configured and
    the fallback is off or a base URL was configured. Clients are reused while the settings
    stay the same, so cells share connections. ``home`` is the history directory (default:
    ``MIRAGIC_HOME``, else the user data directory); every client records its jobs there.
    """
    from miragic_nb._store.history import History, default_home

    history_home = default_home(home)
    global _notice_given
    key = _pick_key(api_key)[0]
    with _lock:
        if _uses_emulator(api_key=api_key, base_url=base_url, offline_fallback=offline_fallback):
            emulator = builtin_emulator()
            notice = None
            if not _prefer_emulator and not _notice_given:
                _notice_given = True
                notice = FALLBACK_NOTICE

            def make_emulator_client() -> Client:
                return Client(
                    api_key=emulator.api_key,
                    base_url=emulator.url,
                    timeout=timeout,
                    poll_schedule=poll_schedule,
                    history=History(history_home),
                    emulator=True,  # every result it makes says so, and costs nothing
                )

            client = _cached(
                ("builtin", emulator.url, timeout, repr(poll_schedule), history_home),
                make_emulator_client,
            )
            return ResolvedClient(client, True, notice)
    explicit_url = _explicit_base_url(base_url)
    if key is None:
        raise MissingAPIKeyError(_missing_key_message(explicit_url), field="api_key")
    resolved_url = config.base_url_from_env(explicit_url)
    client = _cached(
        ("api", key, resolved_url, timeout, repr(poll_schedule), history_home),
        lambda: Client(
            api_key=key,
            base_url=resolved_url,
            timeout=timeout,
            poll_schedule=poll_schedule,
            history=History(history_home),
        ),
    )
    return ResolvedClient(client, False)


def resolve(settings: Settings) -> ResolvedClient:
    """``resolve_client`` for a face's ``Settings``."""
    return resolve_client(
        base_url=settings.base_url,
        offline_fallback=settings.offline_fallback,
        timeout=settings.timeout,
        poll_schedule=settings.poll_schedule,
        home=settings.home,
    )


def uses_emulator(settings: Settings) -> bool:
    """Whether resolving ``settings`` now would use the built-in emulator; starts nothing.

    Raises ``MissingAPIKeyError`` as ``resolve`` would when neither a key nor the emulator
    can serve.
    """
    emulator = _uses_emulator(
        api_key=None, base_url=settings.base_url, offline_fallback=settings.offline_fallback
    )
    if not emulator and _pick_key(None)[0] is None:
        message = _missing_key_message(_explicit_base_url(settings.base_url))
        raise MissingAPIKeyError(message, field="api_key")
    return emulator


def _uses_emulator(*, api_key: str | None, base_url: str | None, offline_fallback: bool) -> bool:
    if _prefer_emulator:
        return True
    no_key = _pick_key(api_key)[0] is None
    return no_key and _explicit_base_url(base_url) is None and fallback_enabled(offline_fallback)


def _explicit_base_url(base_url: str | None) -> str | None:
    return base_url or os.environ.get(config.ENV_BASE_URL) or None


def key_source() -> str | None:
    """Where the key would come from now (``None`` when there is none); never the key."""
    return _pick_key(None)[1]


def _pick_key(explicit: str | None) -> tuple[config.Secret | None, str | None]:
    checked = config.check_api_key(explicit)
    if checked is not None:
        return config.Secret(checked), "argument"
    if _session_key is not None:
        return _session_key, "%miragic login (this session)"
    env_key = config.api_key_from_env(None)
    if env_key is not None:
        return config.Secret(env_key), config.ENV_API_KEY
    return None, None


def _missing_key_message(explicit_url: str | None) -> str:
    why = (
        f"a base URL is configured ({explicit_url})"
        if explicit_url
        else "the offline fallback is off"
    )
    return (
        f"no Miragic API key and {why}: run `%miragic login`, or set the MIRAGIC_API_KEY "
        "environment variable"
    )


def _cached(settings: tuple[Any, ...], make: Callable[[], Client]) -> Client:
    with _lock:
        client = _clients.get(settings)
        if client is None:
            client = make()
            _clients[settings] = client
            while len(_clients) > _CLIENT_CACHE_SIZE:
                _clients.popitem(last=False)[1].close()
        else:
            _clients.move_to_end(settings)
        return client


def reset() -> None:
    """Forget the session key, cached clients and the notice; stop the emulator (for tests)."""
    global _notice_given
    stop_builtin_emulator()
    clear_session_key()
    with _lock:
        _notice_given = False
        while _clients:
            _clients.popitem()[1].close()


# -- the loaded extension's settings -----------------------------------------------------------


def attach(source: Callable[[], Settings], *, max_credits: int | None) -> None:
    """Make ``source`` (the loaded magic's ``%config Miragic.*``) every face's settings, and
    ``max_credits`` the session's credit cap."""
    global _settings_source
    with _lock:
        _settings_source = source
    set_credit_cap(max_credits)


def detach() -> None:
    """Forget the attached settings and the credit cap (the extension was unloaded)."""
    global _settings_source
    with _lock:
        _settings_source = None
    set_credit_cap(None)


def current_settings() -> Settings:
    """The attached settings, else the defaults."""
    with _lock:
        source = _settings_source
    return source() if source is not None else Settings()


def set_credit_cap(limit: int | None) -> None:
    """Credits this process may spend from now on, through any face (None: no limit)."""
    budget.set_session_limit(limit)


def default_client() -> Client:
    """The client ``miragic_nb.generate`` uses: resolved from the current settings each call
    (the same client while they stay the same), with the offline notice on stderr."""
    import sys

    resolved = resolve(current_settings())
    if resolved.notice:
        print(resolved.notice, file=sys.stderr)
    return resolved.client


def history(settings: Settings) -> History:
    """The history a face with ``settings`` reads (``%miragic history``, ``usage``)."""
    from miragic_nb._store.history import History

    return History(settings.home or None)
