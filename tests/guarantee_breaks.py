"""Deliberate breaks of the code behind each row of the guarantees table.

``python -m tests.prove_guarantees`` runs each row's cited tests once per break of that row,
with ``MIRAGIC_BREAK=<row key>/<break name>``; ``tests/conftest.py`` then calls
:func:`apply_from_environment` before any test runs, and the row's tests must fail. The break
also reaches every Python process the tests start (kernels, subprocesses):
:func:`apply_from_environment` puts ``tests/breaks_site`` on ``PYTHONPATH``, whose
``sitecustomize`` applies it there too.

Each break undoes one promise of its row the way a plausible bug would (a check skipped, a
constant loosened, an error left unwrapped), by patching attributes: no package file is
edited. A row that makes several promises has a break for each one it can.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import importlib
import io
import os
import pkgutil
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ENV = "MIRAGIC_BREAK"
SITE = Path(__file__).resolve().parent / "breaks_site"

Break = Callable[[pytest.MonkeyPatch], None]

#: Rows whose tests cannot be re-run under a break, and why (none today).
EXEMPT: dict[str, str] = {}

#: Where the API calls live (``Client`` is a facade over it).
_API = (("miragic_nb._api.miragic", "MiragicAPI"),)


def _module(name: str) -> types.ModuleType:
    return importlib.import_module(name)


def _import_package() -> None:
    package = importlib.import_module("miragic_nb")
    for info in pkgutil.walk_packages(package.__path__, "miragic_nb."):
        if ".emulator" not in info.name:
            with contextlib.suppress(ImportError):
                importlib.import_module(info.name)


def _everywhere(mp: pytest.MonkeyPatch, module: str, name: str, replacement: object) -> None:
    """Replace ``module.name`` in its module and wherever the package imported it by name
    (``from ... import server_text``); the emulator, the tests' oracle, keeps its own."""
    original = getattr(_module(module), name)
    _import_package()
    for loaded_name, loaded in list(sys.modules.items()):
        if not loaded_name.startswith("miragic_nb") or ".emulator" in loaded_name:
            continue
        for attribute, value in list(vars(loaded).items()):
            if value is original:
                mp.setattr(loaded, attribute, replacement)


def _api_constant(mp: pytest.MonkeyPatch, name: str, value: object) -> None:
    for module_name, _ in _API:
        with contextlib.suppress(ImportError):
            module = _module(module_name)
            if hasattr(module, name):
                mp.setattr(module, name, value)


def _api_method(
    mp: pytest.MonkeyPatch, name: str, make: Callable[[Any, types.ModuleType], Any]
) -> None:
    """Replace method ``name`` of each API class that defines it with ``make(original, module)``."""
    for module_name, class_name in _API:
        with contextlib.suppress(ImportError, AttributeError):
            module = _module(module_name)
            cls = getattr(module, class_name)
            if name in vars(cls):
                mp.setattr(cls, name, make(vars(cls)[name], module))


# -- one job per generation ------------------------------------------------------------------


def create_retried_like_a_read(mp: pytest.MonkeyPatch) -> None:
    """the create POST is retried after read errors and 5xx, like a status read"""
    transport = _module("miragic_nb._api.transport")

    def create_retry() -> Any:
        return transport.BoundedRetry(
            total=4,
            connect=3,
            read=2,
            status=3,
            redirect=0,
            backoff_factor=0.05,
            status_forcelist=(429, 500, 502, 503, 504),
            allowed_methods=frozenset({"POST"}),
            **transport._ANSWERS_COME_BACK,
        )

    mp.setattr(transport, "create_retry", create_retry)


def lost_create_said_never_sent(mp: pytest.MonkeyPatch) -> None:
    """a create whose answer was lost is reported as never sent"""
    mp.setattr(_module("miragic_nb._api.transport"), "never_connected", lambda exc: True)


# -- the job id survives ---------------------------------------------------------------------


def error_loses_the_job_id(mp: pytest.MonkeyPatch) -> None:
    """a job's error does not carry its id"""
    engine = _module("miragic_nb._engine.engine")
    ended = engine._ended

    def without_id(exc: Exception, job_id: str, **kwargs: Any) -> Any:
        error = ended(exc, job_id, **kwargs)
        error.job_id = None
        return error

    mp.setattr(engine, "_ended", without_id)


def history_left_pending(mp: pytest.MonkeyPatch) -> None:
    """how a job ended is never written to the history"""
    engine = _module("miragic_nb._engine.engine")
    mp.setattr(engine.Engine, "_record_end", lambda self, handle, state, error: None)


# -- transient faults ------------------------------------------------------------------------


def failed_status_read_ends_the_wait(mp: pytest.MonkeyPatch) -> None:
    """a failed status read ends the wait"""
    errors = _module("miragic_nb._core.errors")

    def make(get_job: Any, module: types.ModuleType) -> Any:
        def fragile(self: Any, job_id: str) -> Any:
            try:
                return get_job(self, job_id)
            except (errors.APIConnectionError, errors.RateLimitError, errors.APIError) as exc:
                raise errors.MiragicError(f"gave up after a failed status read: {exc}") from None

        return fragile

    _api_method(mp, "get_job", make)


def broken_download_not_retried(mp: pytest.MonkeyPatch) -> None:
    """a download broken mid-body or answered 5xx is not tried again"""
    _api_constant(mp, "DOWNLOAD_ATTEMPTS", 1)


# -- tolerant reading ------------------------------------------------------------------------


def unknown_status_is_failed(mp: pytest.MonkeyPatch) -> None:
    """a status the client does not know is read as FAILED"""
    jobs = _module("miragic_nb._core.jobs")
    from_record = jobs.Job.from_record.__func__

    def strict(cls: Any, record: Any, *, base_url: str | None = None) -> Any:
        job = from_record(cls, record, base_url=base_url)
        known = {"PENDING", "COMPLETED", "FAILED"}
        return job if job.status in known else dataclasses.replace(job, status="FAILED")

    mp.setattr(jobs.Job, "from_record", classmethod(strict))


def progress_passed_as_sent(mp: pytest.MonkeyPatch) -> None:
    """progress reaches callbacks as the server sent it"""
    jobs = _module("miragic_nb._core.jobs")
    mp.setattr(jobs, "_progress", lambda value, status: value)


# -- one readable line -----------------------------------------------------------------------


def html_kept_in_messages(mp: pytest.MonkeyPatch) -> None:
    """an error page's HTML is kept in the message instead of its title"""
    _everywhere(mp, "miragic_nb._core.errors", "body_excerpt", lambda text, limit=160: text)


# -- downloads are checked -------------------------------------------------------------------


def no_download_size_cap(mp: pytest.MonkeyPatch) -> None:
    """a result is read whatever its size"""
    _api_constant(mp, "MAX_DOWNLOAD_BYTES", 1 << 40)
    transport = _module("miragic_nb._api.transport")
    read_download = transport._read_download
    mp.setattr(
        transport,
        "_read_download",
        lambda response, *, max_bytes, job_id: read_download(
            response, max_bytes=1 << 40, job_id=job_id
        ),
    )


def no_length_check(mp: pytest.MonkeyPatch) -> None:
    """a body shorter than its Content-Length is taken as the whole image"""
    transport = _module("miragic_nb._api.transport")

    def read_download(response: Any, *, max_bytes: int, job_id: str) -> bytes:
        return bytes(response.raw.read(decode_content=True, enforce_content_length=False))

    mp.setattr(transport, "_read_download", read_download)


def decoder_errors_unwrapped(mp: pytest.MonkeyPatch) -> None:
    """a result that is not an image fails with the decoder's own exception"""
    images = _module("miragic_nb._core.images")
    from PIL import Image

    def decode(data: bytes, *, max_pixels: int = images.MAX_PIXELS) -> Any:
        if not data:
            raise images.DownloadError("the result is empty, not an image", status_code=200)
        image = Image.open(io.BytesIO(data), formats=images.RESULT_FORMATS)
        if image.size[0] * image.size[1] > max_pixels:
            raise images.DownloadError("over the pixel cap", status_code=200)
        image.load()
        return image

    mp.setattr(images, "decode", decode)


def no_pixel_cap(mp: pytest.MonkeyPatch) -> None:
    """a result's pixels are allocated whatever it declares"""
    images = _module("miragic_nb._core.images")
    from PIL import Image

    def decode(data: bytes, *, max_pixels: int = images.MAX_PIXELS) -> Any:
        try:
            image = Image.open(io.BytesIO(data), formats=images.RESULT_FORMATS)
            image.load()
        except Exception as exc:
            raise images.DownloadError(f"not a decodable image: {exc}", status_code=200) from None
        return image

    mp.setattr(images, "decode", decode)
    mp.setattr(Image, "MAX_IMAGE_PIXELS", None)


def size_mismatch_not_noted(mp: pytest.MonkeyPatch) -> None:
    """an image of another size than asked is not noted as such"""
    result_info = _module("miragic_nb._core.result_info")
    mp.setattr(result_info.ResultInfo, "size_mismatch", property(lambda self: False))


# -- expired signed URLs ---------------------------------------------------------------------


def refused_url_never_refreshed(mp: pytest.MonkeyPatch) -> None:
    """a refused result URL is an error, never refreshed"""
    _api_constant(mp, "GONE_STATUSES", ())


# -- the key goes to the API's origin only -----------------------------------------------------


def key_sent_to_every_host(mp: pytest.MonkeyPatch) -> None:
    """the key is added to requests for any host"""
    transport = _module("miragic_nb._api.transport")

    def always(self: Any, request: Any) -> Any:
        request.headers["X-API-Key"] = self._api_key.reveal()
        return request

    mp.setattr(transport.ApiKeyAuth, "__call__", always)


def key_kept_across_redirects(mp: pytest.MonkeyPatch) -> None:
    """a redirect to another origin keeps the key header"""
    transport = _module("miragic_nb._api.transport")
    rebuild = transport.requests.Session.rebuild_auth
    mp.setattr(transport.OriginBoundSession, "rebuild_auth", rebuild)
    mp.setattr(transport._OriginGuard, "__call__", lambda self, response, *a, **k: None)


# -- the key is never written or shown -------------------------------------------------------


def key_in_reprs(mp: pytest.MonkeyPatch) -> None:
    """the key's holders show it in their repr"""
    config = _module("miragic_nb._core.config")
    transport = _module("miragic_nb._api.transport")
    mp.setattr(config.Secret, "__repr__", lambda self: f"Secret({self._value!r})")
    mp.setattr(config.Secret, "__str__", lambda self: f"Secret({self._value!r})")
    mp.setattr(transport.HeaderSecret, "__repr__", str.__repr__)


# -- Ctrl-C, cancel, exit ----------------------------------------------------------------------


def ctrl_c_raised_during_create(mp: pytest.MonkeyPatch) -> None:
    """a Ctrl-C during the create is raised at once"""
    mp.setattr(_module("miragic_nb._engine.engine"), "deferred_interrupt", contextlib.nullcontext)


def cancel_not_checked_before_create(mp: pytest.MonkeyPatch) -> None:
    """the cancel switch is not checked before a create"""
    engine = _module("miragic_nb._engine.engine")

    def begin_send(self: Any) -> bool:
        self._sent = True
        return True

    mp.setattr(engine.JobHandle, "begin_send", begin_send)


def cancel_not_checked_between_downloads(mp: pytest.MonkeyPatch) -> None:
    """a cancelled job's failed download is tried again"""
    _api_method(
        mp,
        "download",
        lambda download, module: lambda self, job, *, cancel=None: download(self, job),
    )


def workers_hold_the_exit(mp: pytest.MonkeyPatch) -> None:
    """job workers run in non-daemon threads"""
    engine = _module("miragic_nb._engine.engine")

    class NonDaemon(threading.Thread):
        def __init__(self, *args: Any, daemon: bool | None = None, **kwargs: Any) -> None:
            super().__init__(*args, daemon=False, **kwargs)

    shim = types.SimpleNamespace(**{**vars(threading), "Thread": NonDaemon})
    mp.setattr(engine, "threading", shim)


# -- the key: malformed, pickled ---------------------------------------------------------------


def malformed_key_accepted(mp: pytest.MonkeyPatch) -> None:
    """any non-blank key is accepted as it is"""

    def check_api_key(key: str | None, *, source: str = "api_key") -> str | None:
        return key.strip() if key is not None and key.strip() else None

    _everywhere(mp, "miragic_nb._core.config", "check_api_key", check_api_key)


def key_holders_pickle(mp: pytest.MonkeyPatch) -> None:
    """key holders pickle like any object"""
    mp.delattr(_module("miragic_nb._core.config").HoldsKey, "__reduce_ex__")


# -- bad input, image_url ----------------------------------------------------------------------


def request_fields_unchecked(mp: pytest.MonkeyPatch) -> None:
    """a request's fields are not checked"""
    request = _module("miragic_nb._core.request")
    mp.setattr(request.GenerationRequest, "__post_init__", lambda self: None)


def image_url_fetched(mp: pytest.MonkeyPatch) -> None:
    """the client fetches image_url to see that it is there"""
    client = _module("miragic_nb.client")
    make = client.Client._prepare

    def fetching(self: Any, prompt: Any, options: Any) -> Any:
        request = make(self, prompt, options)
        if request.image_url:
            import requests

            with contextlib.suppress(requests.RequestException):
                requests.get(request.image_url, timeout=5).close()
        return request

    mp.setattr(client.Client, "_prepare", fetching)


def escape_does_nothing(mp: pytest.MonkeyPatch) -> None:
    """html.escape does nothing in the package"""
    shim = types.SimpleNamespace(**{**vars(html), "escape": lambda text, quote=True: text})
    _import_package()
    for name, module in list(sys.modules.items()):
        if name.startswith("miragic_nb") and getattr(module, "html", None) is html:
            mp.setattr(module, "html", shim)


# -- the history -------------------------------------------------------------------------------


def job_id_not_written_at_create(mp: pytest.MonkeyPatch) -> None:
    """the job id is not written when the create call returns"""
    history = _module("miragic_nb._store.history")
    record = history.History.record

    def without_created(self: Any, write: Any, *, wait: float = 0.0) -> None:
        if write.kind != "created":
            record(self, write, wait=wait)

    mp.setattr(history.History, "record_created", lambda self, *args, **kwargs: None)
    mp.setattr(history.History, "record", without_created)


def write_without_the_lock(mp: pytest.MonkeyPatch) -> None:
    """a write transaction starts without taking the write lock"""
    store = _module("miragic_nb._store.store")

    @contextlib.contextmanager
    def writing(self: Any) -> Iterator[Any]:
        with self._transaction("BEGIN") as connection:
            yield connection

    mp.setattr(store.Database, "writing", writing)


def newer_database_read_as_ours(mp: pytest.MonkeyPatch) -> None:
    """a database from a newer version is read as our own"""
    store = _module("miragic_nb._store.store")

    def version(self: Any, connection: Any) -> int:
        found = int(connection.execute("PRAGMA user_version").fetchone()[0])
        return min(found, int(store.SCHEMA_VERSION))

    mp.setattr(store.Database, "_version", version)


def upgrade_drops_events(mp: pytest.MonkeyPatch) -> None:
    """a first-release record's events are not copied"""
    legacy = _module("miragic_nb._store.legacy")
    read = legacy._read

    def without_events(path: Path) -> Any:
        found = read(path)
        return None if found is None else (found[0], [])

    mp.setattr(legacy, "_read", without_events)


def surrogates_stored_as_sent(mp: pytest.MonkeyPatch) -> None:
    """text is stored as the server sent it (lone surrogates included)"""
    _everywhere(mp, "miragic_nb._store.store", "clean_text", lambda text: text)


def userinfo_kept(mp: pytest.MonkeyPatch) -> None:
    """URLs are stored with their user:pass@"""
    for module in ("miragic_nb._api.transport", "miragic_nb._core.urls", "miragic_nb._store.store"):
        with contextlib.suppress(ImportError, AttributeError):
            _everywhere(mp, module, "strip_userinfo", lambda url: url)
    mp.setattr(_module("miragic_nb._core.result_info"), "_no_userinfo", lambda url: url)


# -- hostile servers ---------------------------------------------------------------------------


def answer_for_another_job_taken(mp: pytest.MonkeyPatch) -> None:
    """a status answer is taken for the job asked about, whatever id it names"""
    from urllib.parse import quote

    def make(original: Any, module: types.ModuleType) -> Any:
        def get_job(self: Any, job_id: str) -> Any:
            self.require_key()
            job_id = module.check_job_id(job_id)
            url = self.base_url + module.JOB_PATH + quote(job_id, safe="")
            data = self._send("GET", url, job_id=job_id).get("data")
            if not isinstance(data, dict):
                raise module.APIError("no 'data' object", status_code=200, job_id=job_id)
            return module.Job.from_record({**data, "id": job_id}, base_url=self.base_url)

        return get_job

    _api_method(mp, "get_job", make)


def any_format_decoded(mp: pytest.MonkeyPatch) -> None:
    """Pillow may decode a result in any format it knows"""
    mp.setattr(_module("miragic_nb._core.images"), "RESULT_FORMATS", None)


def created_at_read_strictly(mp: pytest.MonkeyPatch) -> None:
    """createdAt is read strictly, so an odd one fails the create"""
    jobs = _module("miragic_nb._core.jobs")
    from datetime import datetime, timezone

    def strict(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                value = float(value)
        return datetime.fromtimestamp(float(value) / 1000, tz=timezone.utc)

    mp.setattr(jobs, "_timestamp", strict)


def body_read_without_a_clock(mp: pytest.MonkeyPatch) -> None:
    """a body is read without a clock: only the per-read timeout limits it"""
    transport = _module("miragic_nb._api.transport")

    def read_body(response: Any, *, limit: int) -> bytes:
        chunks, size = [], 0
        try:
            while chunk := response.raw.read1(65536, decode_content=True):
                size += len(chunk)
                if size > limit:
                    raise transport.BodyError("too_large", "over the cap")
                chunks.append(chunk)
        except (OSError, transport.urllib3.exceptions.HTTPError) as exc:
            raise transport.BodyError("broken", type(exc).__name__) from exc
        return b"".join(chunks)

    mp.setattr(transport, "read_body", read_body)


def create_sent_after_the_deadline(mp: pytest.MonkeyPatch) -> None:
    """the create is sent even when no time is left"""
    transport = _module("miragic_nb._api.transport")
    context = _module("miragic_nb._core.context")
    request_json = transport.request_json

    def unbounded_create(session: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        if method != "POST":
            return request_json(session, method, *args, **kwargs)
        token = context._deadline.set(float("inf"))
        try:
            return request_json(session, method, *args, **kwargs)
        finally:
            context._deadline.reset(token)

    mp.setattr(transport, "request_json", unbounded_create)


def retry_after_uncapped(mp: pytest.MonkeyPatch) -> None:
    """Retry-After is honoured as the server says"""
    transport = _module("miragic_nb._api.transport")
    mp.setattr(transport.BoundedRetry, "retry_after_cap", float("inf"))
    mp.setattr(transport.CreateRetry, "retry_after_cap", float("inf"))
    mp.setattr(transport, "MAX_READ_RETRY_AFTER_S", float("inf"))


def answers_uncapped(mp: pytest.MonkeyPatch) -> None:
    """API answers are read whatever their size"""
    mp.setattr(_module("miragic_nb._api.transport"), "MAX_ANSWER_BYTES", 1 << 40)


def unforeseen_error_leaves(mp: pytest.MonkeyPatch) -> None:
    """an unforeseen exception leaves the engine as it is"""
    engine = _module("miragic_nb._engine.engine")
    ended = engine._ended

    def unwrapped(exc: Exception, job_id: str, **kwargs: Any) -> Any:
        if not isinstance(exc, engine.MiragicError):
            exc.job_id = job_id  # type: ignore[attr-defined]
            return exc
        return ended(exc, job_id, **kwargs)

    mp.setattr(engine, "_ended", unwrapped)


def fuzzed_decoder_errors_unwrapped(mp: pytest.MonkeyPatch) -> None:
    """a decoder's own exception leaves decode() unwrapped"""
    decoder_errors_unwrapped(mp)
    # Hypothesis would spend minutes shrinking the first failure it finds; one is enough.
    from hypothesis import Phase, settings

    phases = [Phase.explicit, Phase.reuse, Phase.generate]
    settings.register_profile("guarantee-break", phases=phases, database=None)
    settings.load_profile("guarantee-break")


def server_text_unshortened(mp: pytest.MonkeyPatch) -> None:
    """server text is made one line but never shortened"""
    errors = _module("miragic_nb._core.errors")

    def one_line(text: str, limit: int = 160) -> str:
        return " ".join(errors._CONTROL.sub(" ", text).split())

    _everywhere(mp, "miragic_nb._core.errors", "server_text", one_line)


def non_finite_numbers_read(mp: pytest.MonkeyPatch) -> None:
    """a non-finite number is read as a number"""
    jobs = _module("miragic_nb._core.jobs")
    number = jobs._number
    mp.setattr(jobs, "_number", lambda value: value if isinstance(value, float) else number(value))


def result_bytes_echoed(mp: pytest.MonkeyPatch) -> None:
    """the error quotes what the result holds"""
    mp.setattr(_module("miragic_nb._core.images"), "_sniff", lambda data: repr(data[:120]))


def link_local_fetched(mp: pytest.MonkeyPatch) -> None:
    """any result host is fetched: no check of the URL, none where the connection opens"""
    _everywhere(mp, "miragic_nb._api.transport", "refuse_link_local", lambda url: None)
    transport = _module("miragic_nb._api.transport")
    if hasattr(transport, "result_fetch"):
        _everywhere(mp, "miragic_nb._api.transport", "result_fetch", contextlib.nullcontext)


# -- stops are quiet -------------------------------------------------------------------------


def stopped_jobs_called_failed(mp: pytest.MonkeyPatch) -> None:
    """a stop's summary counts the jobs it stopped as failed"""
    group = _module("miragic_nb._engine.group")
    states = _module("miragic_nb._core.states")
    count = group.Summary.count
    stops = (states.JobState.INTERRUPTED, states.JobState.NEVER_SENT)

    def with_stops(self: Any, state: Any) -> int:
        if state is states.JobState.FAILED:
            return int(count(self, state)) + sum(count(self, stop) for stop in stops)
        return int(count(self, state))

    mp.setattr(group.Summary, "count", with_stops)


def stop_says_nothing_of_resuming(mp: pytest.MonkeyPatch) -> None:
    """a stop prints its head line only: no resume command, no rerun hint"""
    group = _module("miragic_nb._engine.group")
    stop_lines = group.Summary.stop_lines
    mp.setattr(group.Summary, "stop_lines", lambda self, face: stop_lines(self, face)[:1])


def stop_shows_its_traceback(mp: pytest.MonkeyPatch) -> None:
    """short_errors defaults to off, so a stop ends in a traceback"""
    magic = _module("miragic_nb._magic.magic")
    init = magic.Miragic.__init__

    def traceback_on(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.short_errors = False

    mp.setattr(magic.Miragic, "__init__", traceback_on)


BREAKS: dict[str, tuple[Break, ...]] = {
    "one-job-per-generation": (create_retried_like_a_read, lost_create_said_never_sent),
    "the-job-id-survives-every-failure-after-creation": (
        error_loses_the_job_id,
        history_left_pending,
    ),
    "transient-faults-while-waiting-do-not-end-the-wait": (
        failed_status_read_ends_the_wait,
        broken_download_not_retried,
    ),
    "tolerant-reading": (unknown_status_is_failed, progress_passed_as_sent),
    "every-failure-is-one-readable-line": (html_kept_in_messages,),
    "downloads-are-checked": (
        no_download_size_cap,
        no_length_check,
        decoder_errors_unwrapped,
        no_pixel_cap,
        size_mismatch_not_noted,
    ),
    "expired-signed-urls": (refused_url_never_refreshed,),
    "the-key-goes-to-the-api-s-origin-only": (key_sent_to_every_host, key_kept_across_redirects),
    "the-key-is-never-written-or-shown": (key_in_reprs,),
    "a-ctrl-c-never-loses-a-job-id-the-server-handed-out": (ctrl_c_raised_during_create,),
    "no-create-is-sent-after-an-interrupt-or-a-cancel": (
        cancel_not_checked_before_create,
        cancel_not_checked_between_downloads,
    ),
    "an-interrupted-magic-never-holds-the-interpreter-s-exit": (workers_hold_the_exit,),
    "stops-are-quiet-and-say-how-each-job-ended": (
        stopped_jobs_called_failed,
        stop_says_nothing_of_resuming,
        stop_shows_its_traceback,
    ),
    "a-malformed-key-is-refused-where-it-enters": (malformed_key_accepted,),
    "nothing-that-holds-the-key-can-be-pickled": (key_holders_pickle,),
    "bad-input-is-refused-before-any-request": (request_fields_unchecked,),
    "image-url-is-validated-but-never-fetched-by-the-client": (image_url_fetched,),
    "hostile-text-is-escaped": (escape_does_nothing,),
    "under-load": (broken_download_not_retried,),
    "the-history-is-durable": (job_id_not_written_at_create,),
    "several-kernels-share-one-history": (write_without_the_lock,),
    "a-history-that-is-not-ours-to-write-is-never-touched": (newer_database_read_as_ours,),
    "upgrading-from-the-first-release-loses-nothing": (upgrade_drops_events,),
    "server-text-cannot-break-or-forge-the-history": (surrogates_stored_as_sent, userinfo_kept),
    "a-status-answer-never-stands-for-another-job": (answer_for_another_job_taken,),
    "only-jpeg-png-webp-and-gif-results-are-decoded": (any_format_decoded,),
    "a-create-answer-with-a-job-id-always-yields-a-recorded-job": (created_at_read_strictly,),
    "every-request-has-a-wall-clock-deadline": (
        body_read_without_a_clock,
        create_sent_after_the_deadline,
    ),
    "retry-after-is-capped-and-bounded-by-the-time-left": (retry_after_uncapped,),
    "api-answers-are-capped-at-1-mb-after-decompression": (answers_uncapped,),
    "only-miragicerror-leaves-the-client": (unforeseen_error_leaves,),
    "the-readers-of-server-bytes-are-fuzzed": (fuzzed_decoder_errors_unwrapped,),
    "server-text-is-shortened-in-one-place": (server_text_unshortened,),
    "nan-or-infinite-progress-is-no-progress": (non_finite_numbers_read,),
    "a-non-image-result-is-not-echoed": (result_bytes_echoed,),
    "link-local-result-urls-are-refused": (link_local_fetched,),
    "user-pass-never-reaches-the-history": (userinfo_kept,),
}

_applied: list[pytest.MonkeyPatch] = []


def env_value(row: str, brk: Break) -> str:
    """The ``MIRAGIC_BREAK`` value that applies break ``brk`` of row ``row``."""
    return f"{row}/{brk.__name__}"


def apply_from_environment() -> str | None:
    """Apply the break ``MIRAGIC_BREAK`` names (once per process); its value, or None."""
    value = os.environ.get(ENV)
    if not value or _applied:
        return value or None
    row, _, name = value.partition("/")
    found = [brk for brk in BREAKS.get(row, ()) if brk.__name__ == name]
    if not found:
        raise RuntimeError(f"{ENV}={value!r} names no break of tests/guarantee_breaks.py")
    mp = pytest.MonkeyPatch()
    found[0](mp)
    _applied.append(mp)
    # The processes the tests start (kernels, subprocesses) apply it too, via sitecustomize.
    paths = [str(SITE), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return value
