"""Where settings come from: an explicit argument, else a ``MIRAGIC_*`` variable, else a default.

The key is read at the moment a client is made (never at import), so setting
``MIRAGIC_API_KEY`` after the package is imported still works.
"""

from __future__ import annotations

import ipaddress
import os
from typing import NoReturn, SupportsIndex, TypeVar
from urllib.parse import urlsplit

from miragic_nb._core.errors import InvalidRequestError

DEFAULT_BASE_URL = "https://backend.miragic.ai"
ENV_API_KEY = "MIRAGIC_API_KEY"
ENV_BASE_URL = "MIRAGIC_BASE_URL"

#: Seconds to open a connection, and to wait for each read from it.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
#: Seconds ``wait``/``generate`` poll a job before giving up (the job itself is not lost).
DEFAULT_JOB_TIMEOUT_S = 300.0


class HoldsKey:
    """Base of everything that holds the API key: pickling it is refused.

    A pickle is a file (a cache, a multiprocessing message, a saved session): it would hold the
    key in clear text. ``copy.deepcopy`` goes through the same protocol and is refused too,
    unless a class says otherwise.
    """

    __slots__ = ()

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        raise TypeError(
            f"{type(self).__name__} holds the Miragic API key, so it cannot be pickled: the "
            "pickle would hold the key in clear text. Make a new Client where it is needed "
            "(it reads MIRAGIC_API_KEY)"
        )


_Same = TypeVar("_Same", bound="ImmutableKey")


class ImmutableKey(HoldsKey):
    """A key holder that never changes: a copy in this process is the object itself (nothing
    is written anywhere), while pickling stays refused."""

    __slots__ = ()

    def __copy__(self: _Same) -> _Same:
        return self

    def __deepcopy__(self: _Same, memo: dict[int, object]) -> _Same:
        return self


class Secret(ImmutableKey):
    """A string that never shows itself in a repr, str, log line, traceback's locals or pickle."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def check_api_key(key: str | None, *, source: str = "api_key") -> str | None:
    """The key without surrounding whitespace (``None`` when blank), or ``InvalidRequestError``.

    A key is printable ASCII without spaces: anything else (often a line break pasted with it)
    would be refused by the HTTP layer with the key in its message, or smuggle in a header.
    The message names ``source`` and never the key, nor any part of it.
    """
    if key is None or not key.strip():
        return None
    if all("!" <= char <= "~" for char in key.strip()):
        return key.strip()
    del key  # so that a traceback printing its frames' locals does not show it
    raise InvalidRequestError(
        f"{source} must be printable ASCII with no spaces, line breaks or other control "
        "characters; it has others (a pasted line break?), so it was not used and nothing "
        "was sent",
        field="api_key",
    )


def api_key_from_env(explicit: str | None = None) -> str | None:
    """The explicit key, else ``MIRAGIC_API_KEY``; blank values count as unset; checked."""
    if explicit is not None:
        return check_api_key(explicit)
    return check_api_key(os.environ.get(ENV_API_KEY), source=ENV_API_KEY)


def base_url_from_env(explicit: str | None = None) -> str:
    """The explicit base URL, else ``MIRAGIC_BASE_URL``, else the public API; validated."""
    raw = explicit or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
    return normalize_base_url(raw)


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalize_base_url(url: str) -> str:
    """Check a base URL and drop its trailing slash.

    Plain ``http`` is allowed only to loopback hosts (the emulator, tests): anywhere else the
    key would cross the network in clear text.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequestError(
            f"base URL must be an http(s) URL such as {DEFAULT_BASE_URL}, got {url!r}",
            field="base_url",
        )
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise InvalidRequestError(
            f"base URL {url!r} uses plain http to a non-loopback host; use https "
            "(http is allowed only for localhost / 127.0.0.1, e.g. the emulator)",
            field="base_url",
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise InvalidRequestError(
            f"base URL must not carry credentials, a query or a fragment: {url!r}",
            field="base_url",
        )
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def origin(url: str) -> tuple[str, str, int | None]:
    """The (scheme, host, port) triple that decides where the key may go; default ports filled."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def check_timeout(timeout: object) -> float:
    """A job timeout: a positive number of seconds (``inf`` waits for ever)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise InvalidRequestError(
            f"timeout must be a positive number of seconds, got {timeout!r}", field="timeout"
        )
    return float(timeout)


def as_secret(api_key: object) -> Secret | None:
    """The key as a ``Secret`` (explicit, else ``MIRAGIC_API_KEY``); None when there is none."""
    if isinstance(api_key, Secret):
        api_key = api_key.reveal()
    if api_key is not None and not isinstance(api_key, str):
        raise InvalidRequestError(
            f"api_key must be a string, got {type(api_key).__name__}", field="api_key"
        )
    key = api_key_from_env(api_key)
    return Secret(key) if key is not None else None
