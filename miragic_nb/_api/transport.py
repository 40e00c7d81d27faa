"""HTTP transport: the session, retries, deadlines, size caps, the origin-scoped key, and the
typed error every HTTP failure ends in.

Every request runs under a wall-clock deadline (:func:`deadline`) that covers connecting,
urllib3's own retries and their sleeps, and the whole body: a server that drips one byte at a
time never trips a per-read timeout, so bodies are read in a loop that checks the clock, and a
watchdog shuts the socket down at the deadline. Bodies are counted after decompression and
capped, so a small gzip answer cannot inflate into gigabytes. Result URLs that point at
link-local addresses (where cloud metadata services answer) are refused, also after a redirect.
:func:`request_json` (API calls) and :func:`fetch_bytes` (result downloads) turn every failure
into one error from ``errors.py``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family
from urllib3.util.retry import Retry

from miragic_nb._core import config
from miragic_nb._core.context import caller_paces, deadline, time_left
from miragic_nb._core.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    DownloadError,
    InvalidRequestError,
    RateLimitError,
    body_excerpt,
    message_from_body,
    server_text,
)
from miragic_nb._core.polling import parse_retry_after
from miragic_nb._core.urls import strip_userinfo

#: Longest a whole API request (connect, retries, answer) may take when no job deadline is nearer.
REQUEST_DEADLINE_S = 60.0
#: Longest a whole result download may take when no job deadline is nearer.
DOWNLOAD_DEADLINE_S = 300.0
#: Largest API answer accepted, counted after decompression; real answers are a few kB.
MAX_ANSWER_BYTES = 1024 * 1024
#: Longest ``Retry-After`` honoured on the create call (no job exists yet to wait for).
MAX_CREATE_RETRY_AFTER_S = 30.0
#: Longest ``Retry-After`` honoured on a status read or download: the job is paid for and may
#: be ready long before a hostile or confused server says to come back.
MAX_READ_RETRY_AFTER_S = 5.0
#: Statuses urllib3 retries for GETs (status reads and downloads) before we see them.
RETRIED_STATUSES = (429, 502, 503, 504)
_CHUNK = 64 * 1024


def timeouts(connect: float, read: float) -> tuple[float, float]:
    """Per-attempt connect and read timeouts, none longer than the time left (at least 1 ms)."""
    left = max(time_left(), 0.001)
    return (min(connect, left), min(read, left))


class BoundedRetry(Retry):
    """urllib3 ``Retry`` whose every sleep is capped and ends by the current deadline.

    Once the deadline has passed it counts as exhausted, so urllib3 stops retrying and the
    caller sees the last answer or error.
    """

    #: Longest ``Retry-After`` slept on.
    retry_after_cap = MAX_READ_RETRY_AFTER_S

    def get_retry_after(self, response: Any) -> float | None:
        seconds = parse_retry_after(response.headers.get("Retry-After"))
        if seconds is None:
            return None
        return max(0.0, min(seconds, self.retry_after_cap, time_left()))

    def get_backoff_time(self) -> float:
        return max(0.0, min(super().get_backoff_time(), time_left()))

    def is_exhausted(self) -> bool:
        return super().is_exhausted() or time_left() <= 0


class CreateRetry(BoundedRetry):
    # A 503 may have reached the application; only a 429 certainly created no job.
    RETRY_AFTER_STATUS_CODES = frozenset({429})
    retry_after_cap = MAX_CREATE_RETRY_AFTER_S

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if status_code == 429 and caller_paces():
            return False  # the caller's own rate controller must see every 429
        return super().is_retry(method, status_code, has_retry_after)


def read_retry() -> Retry:
    """Status reads and downloads: connection errors, read errors, 429 and 502/503/504."""
    return BoundedRetry(
        total=5,
        connect=4,
        read=2,
        status=4,
        backoff_factor=0.25,
        status_forcelist=RETRIED_STATUSES,
        allowed_methods=frozenset({"GET"}),
        **_ANSWERS_COME_BACK,
    )


def create_retry() -> Retry:
    """The create ``POST``: only what certainly made no job (a refused connection, a 429)."""
    return CreateRetry(
        total=4,
        connect=3,
        read=0,
        status=3,
        redirect=0,
        backoff_factor=0.5,
        status_forcelist=(429,),
        allowed_methods=frozenset({"POST"}),
        **_ANSWERS_COME_BACK,
    )


#: Shared by both policies: the last answer (a 429, a 503, a redirect) is returned to the
#: client, which turns it into a typed error, rather than raised by urllib3.
_ANSWERS_COME_BACK: dict[str, Any] = {
    "other": 0,
    "backoff_max": 4.0,
    "respect_retry_after_header": True,
    "raise_on_status": False,
    "raise_on_redirect": False,
}


class HeaderSecret(str, config.ImmutableKey):
    """The key as a header value: sent as itself, shown masked in reprs, never pickled.

    urllib3's and http.client's frames hold the headers dict while a request is on the wire;
    a traceback that captures locals (a Ctrl-C in IPython's verbose mode) prints it.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "'********'"


class ApiKeyAuth(requests.auth.AuthBase):
    """Adds ``X-API-Key`` only to requests for the API's own origin."""

    def __init__(self, api_key: config.Secret, api_origin: tuple[str, str, int | None]) -> None:
        self._api_key = api_key
        self._api_origin = api_origin

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if request.url and config.origin(request.url) == self._api_origin:
            request.headers["X-API-Key"] = HeaderSecret(self._api_key.reveal())
        else:
            request.headers.pop("X-API-Key", None)
        return request

    def __repr__(self) -> str:
        return "<API key auth (hidden)>"


class LinkLocalAddressError(requests.exceptions.InvalidURL):
    """A URL names a link-local address (169.254.0.0/16, fe80::/10): never fetched."""


class OriginBoundSession(requests.Session):
    """A session that drops ``X-API-Key`` when a redirect leaves the API's origin, and that
    refuses to follow a redirect to a link-local address.

    requests strips ``Authorization`` on a cross-host redirect but keeps custom headers.
    """

    def __init__(self, api_origin: tuple[str, str, int | None]) -> None:
        super().__init__()
        self.api_origin = api_origin

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        target: str | None = super().get_redirect_target(resp)
        if target:
            refuse_link_local(urljoin(resp.url, target))
            # requests reads a redirect's own body before following it, with no size cap or
            # deadline; nobody needs it, so the connection is closed and nothing is read.
            resp.close()
        return target

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: Any) -> None:
        super().rebuild_auth(prepared_request, response)  # type: ignore[no-untyped-call]
        if prepared_request.url and config.origin(prepared_request.url) != self.api_origin:
            prepared_request.headers.pop("X-API-Key", None)


def make_session(
    base_url: str,
    create_path: str,
    api_key: config.Secret | None,
    *,
    session: requests.Session | None = None,
) -> requests.Session:
    """A session for one API: read retries everywhere, the create policy on the create URL.

    A caller's own ``session`` keeps its adapters for other origins; ours are mounted for the
    API's base URL only, and a response hook drops the key before any redirect leaves the
    API's origin (a plain ``requests.Session`` keeps custom headers across hosts).
    """
    origin = config.origin(base_url)
    read_adapter = GuardedAdapter(max_retries=read_retry(), pool_maxsize=32)
    if session is None:
        session = OriginBoundSession(origin)
        session.headers["User-Agent"] = "miragic-nb/0.1 (+python-requests)"
        session.headers["Accept"] = "application/json"
        session.mount("https://", read_adapter)
        session.mount("http://", read_adapter)
    else:
        if session.auth is not None:
            raise InvalidRequestError(
                "the session already has auth set; the API key is added by the client, and "
                "only for the API's origin: pass a session without auth",
                field="session",
            )
        session.mount(base_url + "/", read_adapter)
        session.hooks["response"].append(_OriginGuard(origin))
    # Longest prefix wins: the create endpoint gets the no-duplicate-job retry policy.
    session.mount(base_url + create_path, HTTPAdapter(max_retries=create_retry(), pool_maxsize=32))
    if api_key:
        session.auth = ApiKeyAuth(api_key, origin)
    return session


class _OriginGuard:
    """A response hook for a caller's session: before requests follows a redirect (it copies
    the request that was just sent), drop the key if the redirect leaves the API's origin,
    and refuse a redirect to a link-local address."""

    def __init__(self, api_origin: tuple[str, str, int | None]) -> None:
        self._api_origin = api_origin

    def __call__(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if not response.is_redirect:
            return
        target = urljoin(response.url, response.headers.get("location", ""))
        refuse_link_local(target)
        if config.origin(target) != self._api_origin:
            response.request.headers.pop("X-API-Key", None)

    def __repr__(self) -> str:
        return "<API key origin guard>"


# -- bodies -------------------------------------------------------------------------------


class BodyError(Exception):
    """A body could not be read whole: ``kind`` is "deadline", "too_large" or "broken"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def read_body(response: requests.Response, *, limit: int) -> bytes:
    """Read a streamed response's decoded body, by the current deadline and up to ``limit`` bytes.

    ``read1`` returns whatever one socket read brought, so the clock is checked between
    drips; a watchdog shuts the socket down at the deadline for a read that would block past
    it. Decompression is bounded per read by urllib3, and the decoded size is what is capped.
    """
    raw = response.raw
    left = time_left()
    fired = threading.Event()
    watchdog = threading.Timer(max(left, 0.0), _shut_down, (raw, fired))
    watchdog.daemon = True
    if math.isfinite(left):
        watchdog.start()
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            if time_left() <= 0:
                raise BodyError("deadline", "the answer did not arrive whole before the deadline")
            chunk = raw.read1(_CHUNK, decode_content=True)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise BodyError("too_large", f"the answer is over the {limit:,}-byte cap")
            chunks.append(chunk)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        if fired.is_set() or time_left() <= 0:
            raise BodyError(
                "deadline", "the answer did not arrive whole before the deadline"
            ) from None
        raise BodyError("broken", type(exc).__name__) from exc
    finally:
        watchdog.cancel()
    if fired.is_set():
        # The watchdog cut the connection: what arrived may not be the whole body.
        raise BodyError("deadline", "the answer did not arrive whole before the deadline")
    return b"".join(chunks)


def _shut_down(raw: urllib3.response.HTTPResponse, fired: threading.Event) -> None:
    fired.set()
    # Already closed or released to the pool: then nothing is blocked on it.
    with contextlib.suppress(OSError, ValueError, RuntimeError):
        raw.shutdown()


# -- URLs ---------------------------------------------------------------------------------


def refuse_link_local(url: str) -> None:
    """Raise ``LinkLocalAddressError`` when ``url``'s host is a link-local IP address, however
    it is spelled: percent-encoded octets, a trailing dot, the octal, hex and integer forms
    ``getaddrinfo`` accepts (``0251.0376.0251.0376``, ``0xa9fea9fe``, ``2852039166``), and
    IPv4-mapped IPv6. A host *name* is checked where it is connected to (``GuardedAdapter``).
    """
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return  # requests refuses such a URL itself
    address = _ip_address(host or "")
    if address is not None and address.is_link_local:
        raise LinkLocalAddressError(_refusal(url, address))


def _refusal(url: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return (
        f"refused to fetch {strip_userinfo(url)[:100]}: {address} is a link-local address "
        "(where cloud metadata services live), never a result host"
    )


def _ip_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``host`` spells, as the HTTP library and the resolver would read it."""
    # requests and urllib3 decode percent-escapes in the host; the resolver drops one
    # trailing dot and any IPv6 zone.
    host = unquote(host).strip("[]").removesuffix(".").split("%", 1)[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except (OSError, ValueError):
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


# -- connect-time checks: where a host name really leads ------------------------------------


class LinkLocalConnectError(ValueError):
    """A result host *name* resolved to a link-local address: nothing was connected to.

    Not an ``OSError``, so urllib3 neither wraps nor retries it.
    """


#: True while a result (or a redirect of it) is fetched: connections then go only to vetted
#: addresses.
_results_only: ContextVar[bool] = ContextVar("miragic_results_only", default=False)


@contextmanager
def result_fetch() -> Iterator[None]:
    """Inside the block every connection our adapters open is checked where it is opened:
    the host name is resolved once, refused if any of its addresses is link-local, and the
    socket is connected to those very addresses (so a name that changes its answer between
    a check and the connect, DNS rebinding, leads nowhere else)."""
    token = _results_only.set(True)
    try:
        yield
    finally:
        _results_only.reset(token)


class _VettedConnect:
    """Connection mixin: resolve, refuse link-local, connect to the vetted address only."""

    host: str
    port: int
    _dns_host: str

    def _new_conn(self) -> socket.socket:
        if not _results_only.get():
            return super()._new_conn()  # type: ignore[misc,no-any-return]
        name = self._dns_host.strip("[]")
        try:
            found = socket.getaddrinfo(name, self.port, allowed_gai_family(), socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
        for text in addresses:
            address = _ip_address(text)
            if address is not None and address.is_link_local:
                raise LinkLocalConnectError(
                    f"refused to fetch from {self.host[:100]}: it resolves to {address}, a "
                    "link-local address (where cloud metadata services live), never a result "
                    "host"
                )
        error: NewConnectionError | None = None
        for text in addresses:
            self._dns_host = text  # the socket goes to this vetted address, nowhere else
            try:
                return super()._new_conn()  # type: ignore[misc,no-any-return]
            except NewConnectionError as exc:
                error = exc
            finally:
                self._dns_host = name
        if error is None:
            raise NewConnectionError(self, f"{self.host} resolves to no address")  # type: ignore[arg-type]
        raise error


class _VettedHTTPConnection(_VettedConnect, HTTPConnection):
    pass


class _VettedHTTPSConnection(_VettedConnect, HTTPSConnection):
    pass


class _VettedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _VettedHTTPConnection


class _VettedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _VettedHTTPSConnection


class GuardedAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose connections, during ``result_fetch()``, go only to addresses
    that are not link-local (see ``_VettedConnect``)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _VettedHTTPPool,
            "https": _VettedHTTPSPool,
        }


# -- requests and the errors they end in ------------------------------------------------------


class OutOfTime(Exception):
    """The deadline passed before a request could be sent."""


#: A Content-Length as HTTP writes it (``str.isdigit`` also accepts "²", which int() refuses).
_CONTENT_LENGTH = re.compile(r"[0-9]{1,19}")


def request_json(
    session: requests.Session,
    method: str,
    url: str,
    *,
    server: str,
    timing: tuple[float, float],
    job_id: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Send one API request under the deadline: its JSON object, or the typed error it means.

    ``server`` names the API in messages; ``timing`` is the (connect, read) timeout of each
    attempt, never longer than the time left.
    """
    with deadline(time.monotonic() + REQUEST_DEADLINE_S):
        try:
            if time_left() <= 0:
                raise OutOfTime()
            with session.request(
                method,
                url,
                timeout=timeouts(*timing),
                allow_redirects=False,
                stream=True,
                **kwargs,
            ) as response:
                data = read_body(response, limit=MAX_ANSWER_BYTES)
        except (requests.RequestException, BodyError, OutOfTime) as exc:
            message = _failure_message(exc, server, timing[1])
            if method == "POST" and not never_connected(exc):
                # The create may have reached the server; it is never sent twice.
                message += "; a job may have been created all the same (never sent twice)"
            raise APIConnectionError(message, job_id=job_id) from None
    return parse_answer(response, data, job_id=job_id)


def _failure_message(exc: Exception, server: str, read_timeout: float) -> str:
    """What went wrong with a request that got no usable answer, in one line."""
    if isinstance(exc, OutOfTime):
        return f"no time was left to send a request to {server}"
    if isinstance(exc, BodyError) and exc.kind == "deadline":
        return f"{server} did not send a whole answer in time"
    if isinstance(exc, BodyError) and exc.kind == "too_large":
        return f"{server} sent an answer over {MAX_ANSWER_BYTES:,} bytes"
    if is_read_timeout(exc):
        return f"{server} did not answer within {read_timeout:g}s"
    if isinstance(exc, requests.ConnectionError) and never_connected(exc):
        return f"could not reach {server}: {short_cause(exc)}"
    return f"request to {server} failed: {short_cause(exc)}"


def fetch_bytes(
    session: requests.Session,
    url: str,
    *,
    timing: tuple[float, float],
    max_bytes: int,
    job_id: str,
) -> bytes:
    """Download a result under the deadline and ``max_bytes``; failures are ``DownloadError``.

    Redirects are followed (never to a link-local address); a body that is cut short, too
    large or late is an error, never half an image.
    """
    with deadline(time.monotonic() + DOWNLOAD_DEADLINE_S):
        try:
            refuse_link_local(url)
            if time_left() <= 0:
                raise OutOfTime()
            with (
                result_fetch(),
                session.get(
                    url,
                    timeout=timeouts(*timing),
                    stream=True,
                    allow_redirects=True,
                    headers={"Accept": "image/*"},
                ) as response,
            ):
                if response.status_code >= 400:
                    raise DownloadError(
                        f"result download answered {response.status_code}",
                        status_code=response.status_code,
                        job_id=job_id,
                    )
                return _read_download(response, max_bytes=max_bytes, job_id=job_id)
        except (LinkLocalAddressError, LinkLocalConnectError) as exc:
            raise DownloadError(str(exc), status_code=200, job_id=job_id) from None
        except (requests.RequestException, OutOfTime) as exc:
            cause = "out of time" if isinstance(exc, OutOfTime) else short_cause(exc)
            raise DownloadError(
                f"result download failed: {cause}", status_code=0, job_id=job_id
            ) from None


def _read_download(response: requests.Response, *, max_bytes: int, job_id: str) -> bytes:
    declared = response.headers.get("Content-Length", "")
    expected = int(declared) if _CONTENT_LENGTH.fullmatch(declared) else None
    if expected is not None and expected > max_bytes:
        raise DownloadError(
            f"result is {expected:,} bytes, over the {max_bytes:,}-byte cap",
            status_code=response.status_code,
            job_id=job_id,
        )
    try:
        data = read_body(response, limit=max_bytes)
    except BodyError as exc:
        message = {
            "deadline": "result download did not finish in time",
            "too_large": f"result exceeds the {max_bytes:,}-byte cap",
        }.get(exc.kind, f"result download failed: {short_cause(exc)}")
        code = response.status_code if exc.kind == "too_large" else 0
        raise DownloadError(message, status_code=code, job_id=job_id) from None
    encoded = response.headers.get("Content-Encoding", "identity").lower()
    if expected is not None and encoded == "identity" and len(data) != expected:
        raise DownloadError(
            f"result download was cut short: {len(data):,} of {expected:,} bytes",
            status_code=response.status_code,
            job_id=job_id,
        )
    return data


def is_read_timeout(exc: BaseException) -> bool:
    """requests reports an exhausted urllib3 read timeout as a ConnectionError; find it."""
    if isinstance(exc, requests.ReadTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, urllib3.exceptions.ReadTimeoutError)


def error_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the errors nested in it (args, ``reason``, cause), outermost first."""
    chain = [exc]
    while True:
        inner = chain[-1]
        nested = [arg for arg in inner.args if isinstance(arg, BaseException)]
        reason = getattr(inner, "reason", None)
        following = (
            nested[-1]
            if nested
            else reason
            if isinstance(reason, BaseException)
            else inner.__cause__ or inner.__context__
        )
        if following is None or any(following is seen for seen in chain):
            return chain
        chain.append(following)


def never_connected(exc: BaseException) -> bool:
    """True when the connection never opened, so the server certainly saw no request."""
    unsent = (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError)
    return isinstance(exc, (requests.ConnectTimeout, OutOfTime)) or any(
        isinstance(inner, unsent) for inner in error_chain(exc)
    )


def short_cause(exc: BaseException) -> str:
    """A short cause for a transport error: its innermost error, e.g. "Connection refused".

    requests and urllib3 nest errors three deep and repeat each one's repr in the next one's
    message; only the innermost says what happened, without URLs or object addresses.
    """
    inner = error_chain(exc)[-1]
    if isinstance(inner, OSError) and inner.strerror:
        text = inner.strerror
    else:
        text = str(inner) or type(inner).__name__
        text = text.rsplit(": ", 1)[-1] if "object at 0x" in text else text
    return body_excerpt(text, limit=160) or type(exc).__name__


def parse_answer(response: requests.Response, data: bytes, *, job_id: str | None) -> dict[str, Any]:
    """The JSON object of an API answer (``data``: its whole body), or the typed error it means."""
    status = response.status_code
    try:
        body: Any = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
        body = None
    message = (
        message_from_body(body)
        or body_excerpt(data.decode("utf-8", errors="replace"))
        or server_text(response.reason or "")
        or "no details"
    )
    if status in (401, 403):
        raise AuthenticationError(
            f"the API refused the key ({status}): {message}", status_code=status, job_id=job_id
        )
    if status == 429:
        # X-RateLimit-Reset-After is precise to the millisecond; Retry-After whole seconds.
        retry_after = parse_retry_after(response.headers.get("X-RateLimit-Reset-After"))
        if retry_after is None:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
        hint = f"; retry after {retry_after:g}s" if retry_after is not None else ""
        raise RateLimitError(
            f"rate limited by the API{hint}: {message}", retry_after=retry_after, job_id=job_id
        )
    if status in (400, 422):
        raise InvalidRequestError(
            f"the API rejected the request ({status}): {message}",
            status_code=status,
            job_id=job_id,
        )
    if status >= 300:
        raise APIError(f"the API answered {status}: {message}", status_code=status, job_id=job_id)
    if not isinstance(body, dict):
        raise APIError(
            f"the API answered {status} with a body that is not a JSON object: {message}",
            status_code=status,
            job_id=job_id,
        )
    if body.get("success") is False:
        raise APIError(f"the API reported failure: {message}", status_code=status, job_id=job_id)
    return body
