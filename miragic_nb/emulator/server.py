"""The :class:`Emulator`: two real HTTP servers in daemon threads.

The servers are Werkzeug's threaded development server with one change: the request
handler speaks HTTP/1.1 *with keep-alive*. Werkzeug 3.1's own ``run_wsgi`` always answers
``Connection: close``; ours reads each request body completely before calling the app, so
the connection is always at a request boundary afterwards and can be reused. The handler
also carries out the two connection-level faults (``reset``: RST mid-body; ``truncated``:
short body, then close).
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import struct
import threading
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from .app import CUT_KEY, ApiApp, EmulatorConfig, EmulatorState, JobSeconds, SecondOriginApp
from .faults import Faults
from .inputs import MAX_INPUT_BYTES
from .jobs import EmulatedJob
from .limits import RateLimit, RateLimits
from .queueing import check_workers
from .recording import RecordedRequest

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["Emulator", "SecondOrigin"]

_log = logging.getLogger("miragic_nb.emulator")
_MAX_BODY = 16 * 1024 * 1024


class _Connections:
    """The sockets of open connections, so ``stop()`` can end idle keep-alive ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.add(sock)

    def discard(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)

    def close_all(self) -> None:
        with self._lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(WSGIRequestHandler):
    """Werkzeug's handler, with keep-alive and the connection-level faults."""

    protocol_version = "HTTP/1.1"
    # The head and the body go out in two writes. With Nagle's algorithm the body waits for
    # the ACK of the head, which the client delays (~40 ms on Linux) on a kept-alive
    # connection: every answer would take 40 ms and throughput benchmarks would measure that.
    disable_nagle_algorithm = True
    connections: ClassVar[_Connections]
    _abort = False

    def setup(self) -> None:
        super().setup()
        self.connections.add(self.connection)

    def finish(self) -> None:
        if self._abort:
            # SO_LINGER with a zero timeout turns close() into an abortive close: the peer
            # gets a RST instead of a FIN. close() only marks the socket; the real close
            # (and the RST) happens when super().finish() closes the handler's file objects.
            with contextlib.suppress(OSError):
                linger = struct.pack("ii", 1, 0)
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            self.connection.close()
        try:
            super().finish()
        finally:
            self.connections.discard(self.connection)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        _log.debug('%s "%s" %s', self.address_string(), self.requestline, code)

    def log(self, type: str, message: str, *args: Any) -> None:
        level = logging.WARNING if type == "error" else logging.DEBUG
        _log.log(level, message, *args)

    def _read_body(self, environ: dict[str, Any]) -> bytes | None:
        """The whole request body (None if too large), leaving the stream at the next request."""
        if environ.get("wsgi.input_terminated"):
            # make_environ() already wrapped the stream in a DechunkedInput.
            data: bytes = environ["wsgi.input"].read(_MAX_BODY + 1)
            return None if len(data) > _MAX_BODY else data
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length > _MAX_BODY:
            return None
        chunks, remaining = [], length
        while remaining > 0:
            chunk = self.rfile.read(remaining)
            if not chunk:
                raise ConnectionError("client closed the connection mid-body")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def run_wsgi(self) -> None:
        if self.headers.get("Expect", "").lower().strip() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        environ = self.make_environ()
        self.environ = environ
        try:
            body = self._read_body(environ)
        except (OSError, ValueError):
            self.close_connection = True
            return
        if body is None:
            self.close_connection = True
            self._send(
                413,
                [("Content-Type", "application/json; charset=utf-8")],
                b'{"success":false,"message":"Request body too large"}',
                environ,
            )
            return
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("wsgi.input_terminated", None)
        environ.pop("HTTP_TRANSFER_ENCODING", None)

        captured: list[Any] = []
        chunks: list[bytes] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], object]:
            captured[:] = [status, headers]
            return chunks.append

        try:
            result = self.server.app(environ, start_response)
            try:
                chunks.extend(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except Exception:
            _log.exception("emulator error on %s %s", self.command, self.path)
            captured[:] = ["500 INTERNAL SERVER ERROR", [("Content-Type", "application/json")]]
            chunks[:] = [b'{"success":false,"message":"Internal server error"}']
        code = int(str(captured[0]).split(None, 1)[0])
        self._send(code, list(captured[1]), b"".join(chunks), environ)

    def _send(
        self, code: int, headers: list[tuple[str, str]], payload: bytes, environ: dict[str, Any]
    ) -> None:
        head = environ["REQUEST_METHOD"] == "HEAD"
        self.send_response(code)
        for name, value in headers:
            lowered = name.lower()
            if lowered in ("connection", "transfer-encoding") or (
                lowered == "content-length" and not head
            ):
                continue
            self.send_header(name, value)
        if not head and code not in (204, 304) and code >= 200:
            self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        cut = environ.get(CUT_KEY)
        if cut is not None:
            payload = payload[: int(len(payload) * float(cut[1]))]
        if not head:
            self.wfile.write(payload)
        self.wfile.flush()
        if cut is not None:
            self.close_connection = True
            self._abort = cut[0] == "reset"


class _Server:
    """One origin: a Werkzeug threaded server in a daemon thread."""

    def __init__(self, host: str, port: int, app: WSGIApplication, name: str) -> None:
        self.connections = _Connections()
        handler = type("Handler", (_Handler,), {"connections": self.connections})
        self.server: BaseWSGIServer = make_server(
            host, port, app, threaded=True, request_handler=handler
        )
        self.port: int = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.connections.close_all()
        self.server.server_close()
        self.thread.join(timeout=5)


def _display_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class SecondOrigin:
    """The emulator's second server (another port, so another origin) for result files."""

    def __init__(self, emulator: Emulator) -> None:
        self._emulator = emulator

    @property
    def url(self) -> str:
        """Its base URL, e.g. ``http://127.0.0.1:54322``."""
        return self._emulator._state.second_url

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request it received, oldest first, with their headers."""
        return self._emulator._state.log.snapshot("second")

    def count(
        self, method: str | None = None, path_prefix: str = "", *, job_id: str | None = None
    ) -> int:
        return self._emulator._state.log.count(method, path_prefix, job_id=job_id, origin="second")

    def clear_requests(self) -> None:
        self._emulator._state.log.clear("second")


class Emulator:
    """A local emulator of the Miragic image API, serving on real loopback sockets.

    ``job_seconds`` is a job's duration before jitter: a number, or a callable taking the
    create request's form (``Mapping[str, str]``) and returning seconds. ``jitter`` is the
    relative random spread (0.1: ±10%). ``seed`` makes jitter, random seeds and failure
    rolls reproducible. ``rate_limits`` maps a kind (``"create"``, ``"status"``,
    ``"download"``) to a :class:`~miragic_nb.emulator.limits.RateLimit`; ``workers`` is the
    number of service workers (``None``: every job starts at once). Both can be changed while
    it runs (``emu.limits``, ``emu.workers``). ``standard_headers`` answers a 429 with
    ``Retry-After`` in whole seconds only, as most services do (by default it also sends the
    precise ``X-RateLimit-Reset-After``). ``render_workers`` is unrelated: the threads
    that draw the JPEGs. Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        api_key: str = "emulator-key",
        job_seconds: JobSeconds = 2.0,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        jitter: float = 0.1,
        report_progress: bool = True,
        faults: Faults | None = None,
        second_port: int = 0,
        seed: int | None = None,
        render_workers: int | None = None,
        fetch_timeout: float = 5.0,
        max_input_bytes: int = MAX_INPUT_BYTES,
        rate_limits: Mapping[str, RateLimit] | None = None,
        workers: int | None = None,
        standard_headers: bool = False,
    ) -> None:
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        self.api_key = api_key
        self.host, self.port, self.second_port = host, port, second_port
        self.faults = faults if faults is not None else Faults()
        self.limits = RateLimits(rate_limits)
        """Rate limits per kind; e.g. ``emu.limits.create = RateLimit(4, burst=4)``."""
        self._workers = check_workers(workers)
        self._config = EmulatorConfig(
            api_key=api_key,
            job_seconds=job_seconds,
            jitter=jitter,
            report_progress=report_progress,
            fetch_timeout=fetch_timeout,
            max_input_bytes=max_input_bytes,
            standard_headers=standard_headers,
        )
        self._seed, self._render_workers = seed, render_workers
        self._state = self._new_state()
        self._servers: list[_Server] = []
        self._url = ""
        self.second_origin = SecondOrigin(self)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Emulator:
        """Bind both origins and serve in daemon threads; returns ``self``."""
        if self._servers:
            raise RuntimeError("the emulator is already running")
        if self._state.stopping.is_set():  # restarted after stop(): fresh state, same settings
            self._state = self._new_state()
        main = _Server(self.host, self.port, ApiApp(self._state), "miragic-emulator")
        try:
            second = _Server(
                self.host, self.second_port, SecondOriginApp(self._state), "miragic-emulator-files"
            )
        except BaseException:
            main.stop()
            raise
        self._servers = [main, second]
        self._url = f"http://{_display_host(self.host)}:{main.port}"
        self._state.second_url = f"http://{_display_host(self.host)}:{second.port}"
        return self

    def _new_state(self) -> EmulatorState:
        return EmulatorState(
            self._config,
            self.faults,
            self.limits,
            seed=self._seed,
            render_workers=self._render_workers,
            workers=self._workers,
        )

    def stop(self) -> None:
        """Stop both origins, close open connections and the render pool. Idempotent."""
        self._state.shutdown()
        servers, self._servers = self._servers, []
        for server in servers:
            server.stop()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def job_seconds(self) -> JobSeconds:
        """Duration of new jobs before jitter (number or callable); settable at runtime."""
        return self._config.job_seconds

    @job_seconds.setter
    def job_seconds(self, value: JobSeconds) -> None:
        self._config.job_seconds = value

    @property
    def jitter(self) -> float:
        """Relative random spread of new jobs' durations; settable at runtime."""
        return self._config.jitter

    @jitter.setter
    def jitter(self, value: float) -> None:
        if not 0 <= value < 1:
            raise ValueError("jitter must be in [0, 1)")
        self._config.jitter = value

    @property
    def report_progress(self) -> bool:
        """Whether job records carry ``progress``; settable at runtime."""
        return self._config.report_progress

    @report_progress.setter
    def report_progress(self, value: bool) -> None:
        self._config.report_progress = value

    @property
    def workers(self) -> int | None:
        """Service workers (``None``: unlimited); settable at runtime, for jobs created next."""
        return self._workers

    @workers.setter
    def workers(self, value: int | None) -> None:
        self._state.set_workers(value)
        self._workers = value

    @property
    def running(self) -> bool:
        return bool(self._servers)

    # ------------------------------------------------------------ addresses

    @property
    def url(self) -> str:
        """The API's base URL, e.g. ``http://127.0.0.1:54321``."""
        if not self._url:
            raise RuntimeError("the emulator is not started; call start() or use `with`")
        return self._url

    @property
    def create_url(self) -> str:
        return f"{self.url}/api/v1/image/generate"

    def status_url(self, job_id: str) -> str:
        return f"{self.url}/api/v1/image/jobs/{job_id}"

    @property
    def user_id(self) -> str:
        """The ``userId`` every job of this emulator carries (derived from the key)."""
        return self._state.user_id

    # ------------------------------------------------------------ what happened

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request the API origin received, oldest first (a snapshot)."""
        return self._state.log.snapshot("main")

    def count(
        self,
        method: str | None = None,
        path_prefix: str = "",
        *,
        job_id: str | None = None,
        status: int | None = None,
    ) -> int:
        """How many API-origin requests match, e.g. ``count("GET", "/api/v1/image/jobs/")``."""
        return self._state.log.count(
            method, path_prefix, job_id=job_id, status=status, origin="main"
        )

    def throttled(self, kind: str | None = None) -> int:
        """How many requests (of ``kind``, or all) the rate limits answered 429, on both origins.

        Counted from the request log, so :meth:`clear_requests` resets it. Injected 429s
        (``Fault.rate_limited``) are not counted here.
        """
        return self._state.log.count(kind=kind, throttled=True)

    @property
    def second_origin_requests(self) -> list[RecordedRequest]:
        """Shorthand for ``second_origin.requests``."""
        return self.second_origin.requests

    def clear_requests(self) -> None:
        """Forget the recorded requests of both origins."""
        self._state.log.clear()

    @property
    def jobs(self) -> Mapping[str, EmulatedJob]:
        """The server-side truth about every job, by id (a snapshot of the mapping)."""
        return self._state.jobs()

    def wait_for_job(self, job_id: str, timeout: float = 30.0) -> EmulatedJob:
        """Block until a job has been rendered (not until it is due); for tests."""
        job = self._state.job(job_id)
        if job is None:
            raise KeyError(job_id)
        if not job.wait_rendered(timeout):
            raise TimeoutError(f"job {job_id} was not rendered within {timeout} s")
        return job

    def __repr__(self) -> str:
        where = self._url or "not started"
        return (
            f"<Emulator {where} job_seconds={self._config.job_seconds!r} workers={self._workers!r}"
            f" {self.limits!r} {self.faults!r}>"
        )
