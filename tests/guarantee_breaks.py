"""One deliberate break of the code behind each row of the guarantees table.

``python -m tests.prove_guarantees`` runs each row's cited tests with ``MIRAGIC_BREAK`` set to
the row's key; ``tests/conftest.py`` then calls :func:`apply_from_environment` before any
test runs, and the row's tests must fail. The break also reaches every Python process the
tests start (kernels, subprocesses): :func:`apply_from_environment` puts
``tests/breaks_site`` on ``PYTHONPATH``, whose ``sitecustomize`` applies it there too.

A break undoes the guarantee the way a plausible bug would (a check skipped, a constant
loosened, an error left unwrapped), by patching attributes: no package file is edited.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import importlib
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


def _module(name: str) -> types.ModuleType:
    return importlib.import_module(name)


def _everywhere(mp: pytest.MonkeyPatch, module: str, name: str, replacement: object) -> None:
    """Replace ``module.name`` in its module and wherever the package imported it by name
    (``from .errors import server_text``); the emulator, the tests' oracle, keeps its own."""
    original = getattr(_module(module), name)
    _import_package()
    for loaded_name, loaded in list(sys.modules.items()):
        if not loaded_name.startswith("miragic_nb") or ".emulator" in loaded_name:
            continue
        for attribute, value in list(vars(loaded).items()):
            if value is original:
                mp.setattr(loaded, attribute, replacement)


# -- the breaks, one per row (the key is the slug of the row's bold lead words) -------------


def one_job_per_generation(mp: pytest.MonkeyPatch) -> None:
    """the create POST retried like a status read (read errors and 5xx)"""
    transport = _module("miragic_nb.transport")

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


def job_id_survives(mp: pytest.MonkeyPatch) -> None:
    """a failed job's error loses its id and its history record stays PENDING"""
    engine = _module("miragic_nb.engine")
    ended = engine._ended

    def without_id(exc: Exception, job_id: str, **kwargs: Any) -> Any:
        error = ended(exc, job_id, **kwargs)
        error.job_id = None
        return error

    mp.setattr(engine, "_ended", without_id)
    mp.setattr(engine.Engine, "_record_end", lambda self, handle, state, error: None)


def transient_faults(mp: pytest.MonkeyPatch) -> None:
    """a failed status read ends the wait, and a broken download is not tried again"""
    client = _module("miragic_nb.client")
    errors = _module("miragic_nb.errors")
    get_job = client.Client.get_job

    def fragile(self: Any, job_id: str) -> Any:
        try:
            return get_job(self, job_id)
        except (errors.APIConnectionError, errors.RateLimitError, errors.APIError) as exc:
            raise errors.MiragicError(f"gave up on a failed status read: {exc}") from None

    mp.setattr(client.Client, "get_job", fragile)
    mp.setattr(client, "DOWNLOAD_ATTEMPTS", 1)


def tolerant_reading(mp: pytest.MonkeyPatch) -> None:
    """a status the client does not know is read as FAILED"""
    jobs = _module("miragic_nb.jobs")
    from_record = jobs.Job.from_record.__func__

    def strict(cls: Any, record: Any, *, base_url: str | None = None) -> Any:
        job = from_record(cls, record, base_url=base_url)
        known = {"PENDING", "COMPLETED", "FAILED"}
        return job if job.status in known else dataclasses.replace(job, status="FAILED")

    mp.setattr(jobs.Job, "from_record", classmethod(strict))


def one_readable_line(mp: pytest.MonkeyPatch) -> None:
    """an error page's HTML is kept in the message instead of its title"""
    _everywhere(mp, "miragic_nb.errors", "body_excerpt", lambda text, limit=160: text)


def downloads_are_checked(mp: pytest.MonkeyPatch) -> None:
    """a result is read without its size cap or length check and decoded without any check"""
    transport = _module("miragic_nb.transport")
    images = _module("miragic_nb.images")
    from PIL import Image

    def read_download(response: Any, *, max_bytes: int, job_id: str) -> bytes:
        return bytes(response.raw.read(decode_content=True, enforce_content_length=False))

    def decode(data: bytes, *, max_pixels: int = 0) -> Any:
        image = Image.open(__import__("io").BytesIO(data))
        image.load()
        return image

    mp.setattr(transport, "_read_download", read_download)
    mp.setattr(images, "decode", decode)
    mp.setattr(Image, "MAX_IMAGE_PIXELS", None)


def expired_signed_urls(mp: pytest.MonkeyPatch) -> None:
    """a refused result URL is an error, never refreshed"""
    mp.setattr(_module("miragic_nb.client"), "GONE_STATUSES", ())


def key_to_api_origin_only(mp: pytest.MonkeyPatch) -> None:
    """the key is added to every request and kept across redirects"""
    transport = _module("miragic_nb.transport")

    def always(self: Any, request: Any) -> Any:
        request.headers["X-API-Key"] = self._api_key.reveal()
        return request

    mp.setattr(transport.ApiKeyAuth, "__call__", always)
    mp.setattr(transport.OriginBoundSession, "rebuild_auth", lambda self, prepared, response: None)
    mp.setattr(transport._OriginGuard, "__call__", lambda self, response, *a, **k: None)


def key_never_shown(mp: pytest.MonkeyPatch) -> None:
    """the key's holders show it in their repr"""
    config = _module("miragic_nb.config")
    transport = _module("miragic_nb.transport")
    mp.setattr(config.Secret, "__repr__", lambda self: f"Secret({self._value!r})")
    mp.setattr(config.Secret, "__str__", lambda self: f"Secret({self._value!r})")
    mp.setattr(transport.HeaderSecret, "__repr__", str.__repr__)


def ctrl_c_keeps_the_job_id(mp: pytest.MonkeyPatch) -> None:
    """a Ctrl-C during the create is raised at once"""
    mp.setattr(_module("miragic_nb.engine"), "deferred_interrupt", contextlib.nullcontext)


def no_create_after_cancel(mp: pytest.MonkeyPatch) -> None:
    """the cancel switch is not checked before a create, nor between download tries"""
    engine = _module("miragic_nb.engine")
    client = _module("miragic_nb.client")

    def begin_send(self: Any) -> bool:
        self._sent = True
        return True

    download = client.Client.download
    mp.setattr(engine.JobHandle, "begin_send", begin_send)
    mp.setattr(client.Client, "download", lambda self, job, *, cancel=None: download(self, job))


def interrupted_magic_exits(mp: pytest.MonkeyPatch) -> None:
    """job workers run in non-daemon threads"""
    engine = _module("miragic_nb.engine")

    class NonDaemon(threading.Thread):
        def __init__(self, *args: Any, daemon: bool | None = None, **kwargs: Any) -> None:
            super().__init__(*args, daemon=False, **kwargs)

    mp.setattr(engine, "threading", types.SimpleNamespace(**{**vars(threading), "Thread": NonDaemon}))


def malformed_key_refused(mp: pytest.MonkeyPatch) -> None:
    """any non-blank key is accepted as it is"""

    def check_api_key(key: str | None, *, source: str = "api_key") -> str | None:
        return key.strip() if key is not None and key.strip() else None

    _everywhere(mp, "miragic_nb.config", "check_api_key", check_api_key)


def key_holders_not_pickled(mp: pytest.MonkeyPatch) -> None:
    """key holders pickle like any object"""
    mp.delattr(_module("miragic_nb.config").HoldsKey, "__reduce_ex__")


def bad_input_refused(mp: pytest.MonkeyPatch) -> None:
    """a request's fields are not checked"""
    mp.setattr(_module("miragic_nb.request").GenerationRequest, "__post_init__", lambda self: None)


def image_url_never_fetched(mp: pytest.MonkeyPatch) -> None:
    """the client fetches image_url to see that it is there"""
    client = _module("miragic_nb.client")
    make = client.Client._request

    def fetching(self: Any, prompt: Any, options: Any) -> Any:
        request = make(self, prompt, options)
        if request.image_url:
            import requests

            with contextlib.suppress(requests.RequestException):
                requests.get(request.image_url, timeout=5).close()
        return request

    mp.setattr(client.Client, "_request", fetching)


def hostile_text_escaped(mp: pytest.MonkeyPatch) -> None:
    """html.escape does nothing in the package"""
    shim = types.SimpleNamespace(**{**vars(html), "escape": lambda text, quote=True: text})
    _import_package()
    for name, module in list(sys.modules.items()):
        if name.startswith("miragic_nb") and getattr(module, "html", None) is html:
            mp.setattr(module, "html", shim)


def under_load(mp: pytest.MonkeyPatch) -> None:
    """a download broken mid-body is not tried again"""
    mp.setattr(_module("miragic_nb.client"), "DOWNLOAD_ATTEMPTS", 1)


def history_is_durable(mp: pytest.MonkeyPatch) -> None:
    """the job id is not written when the create call returns"""
    history = _module("miragic_nb.history")
    mp.setattr(history.History, "record_created", lambda self, *args, **kwargs: None)


def kernels_share_one_history(mp: pytest.MonkeyPatch) -> None:
    """a write transaction starts without taking the write lock"""
    store = _module("miragic_nb.store")

    @contextlib.contextmanager
    def writing(self: Any) -> Iterator[Any]:
        with self._transaction("BEGIN") as connection:
            yield connection

    mp.setattr(store.Store, "writing", writing)


def foreign_history_untouched(mp: pytest.MonkeyPatch) -> None:
    """a database from a newer version is read as our own"""
    store = _module("miragic_nb.store")
    mp.setattr(
        store.Store,
        "_version",
        lambda self, c: min(int(c.execute("PRAGMA user_version").fetchone()[0]), store.SCHEMA_VERSION),
    )


def upgrade_loses_nothing(mp: pytest.MonkeyPatch) -> None:
    """a first-release record's events are not copied"""
    legacy = _module("miragic_nb.legacy")
    read = legacy._read

    def without_events(path: Path) -> Any:
        found = read(path)
        return None if found is None else (found[0], [])

    mp.setattr(legacy, "_read", without_events)


def server_text_cannot_break_history(mp: pytest.MonkeyPatch) -> None:
    """text is stored as the server sent it (lone surrogates included)"""
    _everywhere(mp, "miragic_nb.store", "clean_text", lambda text: text)


def answer_for_another_job(mp: pytest.MonkeyPatch) -> None:
    """a status answer is taken for the job asked about, whatever id it names"""
    client = _module("miragic_nb.client")
    from urllib.parse import quote

    def get_job(self: Any, job_id: str) -> Any:
        self._require_key()
        job_id = client.check_job_id(job_id)
        body = self._send("GET", self.base_url + client.JOB_PATH + quote(job_id, safe=""), job_id=job_id)
        data = body.get("data")
        if not isinstance(data, dict):
            raise client.APIError("status answer has no 'data' object", status_code=200, job_id=job_id)
        return client.Job.from_record({**data, "id": job_id}, base_url=self.base_url)

    mp.setattr(client.Client, "get_job", get_job)


def only_four_formats(mp: pytest.MonkeyPatch) -> None:
    """Pillow may decode a result in any format it knows"""
    mp.setattr(_module("miragic_nb.images"), "RESULT_FORMATS", None)


def create_answer_recorded(mp: pytest.MonkeyPatch) -> None:
    """createdAt is read strictly, so an odd one fails the create"""
    jobs = _module("miragic_nb.jobs")
    from datetime import datetime, timezone

    def strict(value: object) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                value = float(value)
        return datetime.fromtimestamp(float(value) / 1000, tz=timezone.utc)  # type: ignore[arg-type]

    mp.setattr(jobs, "_timestamp", strict)


def wall_clock_deadline(mp: pytest.MonkeyPatch) -> None:
    """a body is read without a clock: only the per-read timeout limits it"""
    transport = _module("miragic_nb.transport")

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


def retry_after_capped(mp: pytest.MonkeyPatch) -> None:
    """Retry-After is honoured as the server says"""
    transport = _module("miragic_nb.transport")
    mp.setattr(transport.BoundedRetry, "retry_after_cap", float("inf"))
    mp.setattr(transport.CreateRetry, "retry_after_cap", float("inf"))
    mp.setattr(transport, "MAX_READ_RETRY_AFTER_S", float("inf"))


def answers_capped(mp: pytest.MonkeyPatch) -> None:
    """API answers are read whatever their size"""
    mp.setattr(_module("miragic_nb.transport"), "MAX_ANSWER_BYTES", 1 << 40)


def only_miragic_error_leaves(mp: pytest.MonkeyPatch) -> None:
    """an unforeseen exception leaves the engine as it is"""
    engine = _module("miragic_nb.engine")
    ended = engine._ended

    def unwrapped(exc: Exception, job_id: str, **kwargs: Any) -> Any:
        if not isinstance(exc, engine.MiragicError):
            exc.job_id = job_id  # type: ignore[attr-defined]
            return exc
        return ended(exc, job_id, **kwargs)

    mp.setattr(engine, "_ended", unwrapped)


def readers_fuzzed(mp: pytest.MonkeyPatch) -> None:
    """a decoder's own exception leaves decode() unwrapped"""
    images = _module("miragic_nb.images")
    from PIL import Image

    def decode(data: bytes, *, max_pixels: int = images.MAX_PIXELS) -> Any:
        if not data:
            raise images.DownloadError("the result is empty, not an image", status_code=200)
        image = Image.open(__import__("io").BytesIO(data), formats=images.RESULT_FORMATS)
        if image.size[0] * image.size[1] > max_pixels:
            raise images.DownloadError("over the pixel cap", status_code=200)
        image.load()
        return image

    mp.setattr(images, "decode", decode)


def server_text_shortened(mp: pytest.MonkeyPatch) -> None:
    """server text is made one line but never shortened"""
    errors = _module("miragic_nb.errors")
    _everywhere(mp, "miragic_nb.errors", "server_text", lambda text, limit=160: " ".join(errors._CONTROL.sub(" ", text).split()))


def nan_progress(mp: pytest.MonkeyPatch) -> None:
    """a non-finite number is read as a number"""
    jobs = _module("miragic_nb.jobs")
    number = jobs._number

    def any_float(value: object) -> float | None:
        if isinstance(value, float):
            return value
        return number(value)  # type: ignore[no-any-return]

    mp.setattr(jobs, "_number", any_float)


def non_image_not_echoed(mp: pytest.MonkeyPatch) -> None:
    """the error quotes what the result holds"""
    mp.setattr(_module("miragic_nb.images"), "_sniff", lambda data: repr(data[:120]))


def link_local_refused(mp: pytest.MonkeyPatch) -> None:
    """any result host is fetched"""
    _everywhere(mp, "miragic_nb.transport", "refuse_link_local", lambda url: None)


def userinfo_never_stored(mp: pytest.MonkeyPatch) -> None:
    """URLs are stored with their user:pass@"""
    _everywhere(mp, "miragic_nb.transport", "strip_userinfo", lambda url: url)
    _everywhere(mp, "miragic_nb.store", "strip_userinfo", lambda url: url)
    mp.setattr(_module("miragic_nb.result_info"), "_no_userinfo", lambda url: url)


def _import_package() -> None:
    package = importlib.import_module("miragic_nb")
    for info in pkgutil.walk_packages(package.__path__, "miragic_nb."):
        if ".emulator" not in info.name:
            with contextlib.suppress(ImportError):
                importlib.import_module(info.name)


BREAKS: dict[str, Break] = {
    "one-job-per-generation": one_job_per_generation,
    "the-job-id-survives-every-failure-after-creation": job_id_survives,
    "transient-faults-while-waiting-do-not-end-the-wait": transient_faults,
    "tolerant-reading": tolerant_reading,
    "every-failure-is-one-readable-line": one_readable_line,
    "downloads-are-checked": downloads_are_checked,
    "expired-signed-urls": expired_signed_urls,
    "the-key-goes-to-the-api-s-origin-only": key_to_api_origin_only,
    "the-key-is-never-written-or-shown": key_never_shown,
    "a-ctrl-c-never-loses-a-job-id-the-server-handed-out": ctrl_c_keeps_the_job_id,
    "no-create-is-sent-after-an-interrupt-or-a-cancel": no_create_after_cancel,
    "an-interrupted-magic-never-holds-the-interpreter-s-exit": interrupted_magic_exits,
    "a-malformed-key-is-refused-where-it-enters": malformed_key_refused,
    "nothing-that-holds-the-key-can-be-pickled": key_holders_not_pickled,
    "bad-input-is-refused-before-any-request": bad_input_refused,
    "image-url-is-validated-but-never-fetched-by-the-client": image_url_never_fetched,
    "hostile-text-is-escaped": hostile_text_escaped,
    "under-load": under_load,
    "the-history-is-durable": history_is_durable,
    "several-kernels-share-one-history": kernels_share_one_history,
    "a-history-that-is-not-ours-to-write-is-never-touched": foreign_history_untouched,
    "upgrading-from-the-first-release-loses-nothing": upgrade_loses_nothing,
    "server-text-cannot-break-or-forge-the-history": server_text_cannot_break_history,
    "a-status-answer-never-stands-for-another-job": answer_for_another_job,
    "only-jpeg-png-webp-and-gif-results-are-decoded": only_four_formats,
    "a-create-answer-with-a-job-id-always-yields-a-recorded-job": create_answer_recorded,
    "every-request-has-a-wall-clock-deadline": wall_clock_deadline,
    "retry-after-is-capped-and-bounded-by-the-time-left": retry_after_capped,
    "api-answers-are-capped-at-1-mb-after-decompression": answers_capped,
    "only-miragicerror-leaves-the-client": only_miragic_error_leaves,
    "the-readers-of-server-bytes-are-fuzzed": readers_fuzzed,
    "server-text-is-shortened-in-one-place": server_text_shortened,
    "nan-or-infinite-progress-is-no-progress": nan_progress,
    "a-non-image-result-is-not-echoed": non_image_not_echoed,
    "link-local-result-urls-are-refused": link_local_refused,
    "user-pass-never-reaches-the-history": userinfo_never_stored,
}

_applied: list[pytest.MonkeyPatch] = []


def apply_from_environment() -> str | None:
    """Apply the break ``MIRAGIC_BREAK`` names (once per process); its key, or None."""
    key = os.environ.get(ENV)
    if not key or _applied:
        return key or None
    if key not in BREAKS:
        raise RuntimeError(f"{ENV}={key!r} names no break; the keys: {', '.join(BREAKS)}")
    mp = pytest.MonkeyPatch()
    BREAKS[key](mp)
    _applied.append(mp)
    # The processes the tests start (kernels, subprocesses) apply it too, via sitecustomize.
    paths = [str(SITE), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return key
