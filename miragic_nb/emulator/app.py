"""The emulator's WSGI applications: the API origin and the second (result-file) origin.

Both share one :class:`EmulatorState` (jobs, faults, rate limits, service queue, request log,
render pool). The API origin answers the reference's two calls and serves result files under
``/uploads/image-generation/processed/<user>/<file>.jpg``; the second origin serves the same
files under ``/files/<user>/<file>.jpg`` plus redirect hops ``/hop/<n>/<user>/<file>.jpg``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlencode

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from .faults import TOO_MANY_REQUESTS, Fault, Faults
from .inputs import InputFetchError, fetch_input
from .jobs import COMPLETED, FAILED, PENDING, EmulatedJob
from .limits import RateLimits
from .queueing import ServiceQueue
from .recording import Headers, RecordedRequest, RequestLog
from .render import decompression_bomb, render_image, transform_image
from .validation import ValidationError, validate_create

if TYPE_CHECKING:
    from collections.abc import Iterable

    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["CUT_KEY", "ApiApp", "EmulatorConfig", "EmulatorState", "SecondOriginApp"]

_log = logging.getLogger("miragic_nb.emulator")

#: The environ key through which the app asks the server to cut the connection:
#: ``("reset" | "truncated", fraction_of_body_to_send)``.
CUT_KEY = "miragic.cut"
JSON_TYPE = "application/json; charset=utf-8"
UPLOADS_PREFIX = "/uploads/image-generation/processed"

JobSeconds = float | Callable[[Mapping[str, str]], float]


@dataclass
class EmulatorConfig:
    """Settings read on every job creation/status read; the Emulator's properties write them."""

    api_key: str
    job_seconds: JobSeconds
    jitter: float = 0.1
    report_progress: bool = True
    fetch_timeout: float = 5.0
    max_input_bytes: int = 20 * 1024 * 1024
    #: A 429 carries only ``Retry-After`` in whole seconds, as most services send it (no
    #: ``X-RateLimit-Reset-After``).
    standard_headers: bool = False


class EmulatorState:
    """Everything both origins share. Thread-safe."""

    def __init__(
        self,
        config: EmulatorConfig,
        faults: Faults,
        limits: RateLimits,
        *,
        seed: int | None = None,
        render_workers: int | None = None,
        workers: int | None = None,
    ) -> None:
        self.config = config
        self.faults = faults
        self.limits = limits
        self.queue = ServiceQueue(workers)
        self.log = RequestLog()
        self.user_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"miragic-emulator:{config.api_key}"))
        self.second_url = ""  # set by the server once the second origin is bound
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._jobs: dict[str, EmulatedJob] = {}
        self._files: dict[str, str] = {}
        self._rng = random.Random(seed)
        self._secret = os.urandom(16)
        workers = render_workers or min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="miragic-render")

    # ------------------------------------------------------------ jobs

    def create_job(self, form: Mapping[str, str]) -> EmulatedJob:
        """Validate ``form`` and start a job; raises :class:`ValidationError` (a 400)."""
        params = validate_create(form)
        faults = self.faults
        base = self.config.job_seconds
        seconds = float(base(form) if callable(base) else base)
        with self._lock:
            jitter = self._rng.uniform(-self.config.jitter, self.config.jitter)
            seed = params.seed if params.seed is not None else self._rng.randrange(2**31)
            roll = self._rng.random()
        match = faults.failure_match
        applies = match is None or match.lower() in params.prompt.lower()
        fails = applies and (faults.force_failure or roll < faults.failure_rate)
        duration = max(0.0, seconds * (1.0 + jitter))
        created = time.monotonic()
        started = self.queue.admit(created, duration)
        job = EmulatedJob(
            id=str(uuid.uuid4()),
            user_id=self.user_id,
            form=dict(form),
            parameters=params.parameters(),
            prompt=params.prompt,
            model=params.model,
            width=params.width,
            height=params.height,
            seed=seed,
            image_url=params.image_url,
            file_name=f"{uuid.uuid4()}.jpg",
            duration=duration,
            fail_message=faults.failure_message if fails else None,
            never_finish=faults.never_finish,
            created_mono=created,
            queued_seconds=started - created,
        )
        with self._lock:
            self._jobs[job.id] = job
            self._files[job.file_name] = job.id
        if job.fail_message is not None:
            job.finish_render(None)
        else:
            self._pool.submit(self._render, job)
        return job

    def _render(self, job: EmulatedJob) -> None:
        started = time.perf_counter()
        try:
            if job.image_url:
                source = fetch_input(
                    job.image_url,
                    timeout=self.config.fetch_timeout,
                    max_bytes=self.config.max_input_bytes,
                )
                data = transform_image(
                    source, job.prompt, job.model, job.seed, job.width, job.height
                )
            else:
                nologo = job.parameters["nologo"] == "true"
                data = render_image(
                    job.prompt, job.model, job.seed, job.width, job.height, nologo=nologo
                )
        except InputFetchError as exc:
            job.finish_render(None, str(exc), time.perf_counter() - started)
        except ValueError as exc:
            job.finish_render(None, f"Could not use image_url: {exc}", 0.0)
        except Exception as exc:  # a bug in rendering must fail the job, not hang it
            _log.exception("rendering job %s failed", job.id)
            job.finish_render(None, f"Rendering failed: {exc}", 0.0)
        else:
            job.finish_render(data, None, time.perf_counter() - started)

    def job(self, job_id: str) -> EmulatedJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def job_for_file(self, file_name: str) -> EmulatedJob | None:
        with self._lock:
            job_id = self._files.get(file_name)
            return None if job_id is None else self._jobs.get(job_id)

    def jobs(self) -> dict[str, EmulatedJob]:
        with self._lock:
            return dict(self._jobs)

    def set_workers(self, workers: int | None) -> None:
        """Change the number of service workers; jobs already scheduled keep their schedule."""
        busy_until = (job.started_mono + job.duration for job in self.jobs().values())
        self.queue.resize(workers, busy_until, time.monotonic())

    def shutdown(self) -> None:
        self.stopping.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ signed URLs

    def signature(self, path: str, expires_ms: int) -> str:
        message = f"{path}\n{expires_ms}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:32]

    def signed_query(self, path: str, expires_ms: int | None = None) -> str:
        """``?expires=..&signature=..`` for ``path`` if ``url_ttl`` is set, else ``""``."""
        ttl = self.faults.url_ttl
        if expires_ms is None:
            if ttl is None:
                return ""
            expires_ms = int((time.time() + ttl) * 1000)
        return "?" + urlencode(
            {"expires": expires_ms, "signature": self.signature(path, expires_ms)}
        )

    def check_signature(self, path: str, args: Mapping[str, str]) -> str | None:
        """None if the request may be served, else the reason it is refused (403)."""
        if self.faults.url_ttl is None:
            return None
        raw, signature = args.get("expires", ""), args.get("signature", "")
        if not raw.isdigit() or not signature:
            return "Request is missing a signature"
        if not hmac.compare_digest(signature, self.signature(path, int(raw))):
            return "The request signature does not match"
        if int(raw) < time.time() * 1000:
            return "Request has expired"
        return None


# ---------------------------------------------------------------- responses


def _json(payload: Any, status: int = 200) -> Response:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return Response(body, status=status, content_type=JSON_TYPE)


def _error(message: str, status: int) -> Response:
    return _json({"success": False, "message": message}, status)


def _throttled(wait: float, *, standard: bool = False) -> Response:
    """429 for a request that found its bucket empty; a token is there in ``wait`` seconds
    (``standard``: only ``Retry-After``)."""
    response = _error(TOO_MANY_REQUESTS, 429)
    # Both hints round up, so a client that waits exactly as long always finds a token:
    # Retry-After in whole seconds (RFC 9110 delta-seconds), and the wait to the millisecond
    # in X-RateLimit-Reset-After, as Discord's API sends it.
    millis = math.ceil(wait * 1000)
    response.headers["Retry-After"] = str(max(1, math.ceil(millis / 1000)))
    if not standard:
        response.headers["X-RateLimit-Reset-After"] = f"{millis / 1000:.3f}"
    return response


def _iso(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _access_denied(reason: str) -> Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>AccessDenied</Code><Message>{reason}</Message></Error>"
    )
    return Response(body, status=403, content_type="application/xml")


@dataclass
class _Outcome:
    response: Response
    job_id: str | None = None
    fault: str | None = None


class _Origin:
    """Routing, fault application and request recording shared by both origins."""

    origin = "main"
    url_map: Map
    #: The rate-limit kind of each endpoint (endpoints not listed are never limited).
    limit_kinds: ClassVar[Mapping[str, str]]

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        arrived = time.time()
        request = Request(environ)
        adapter = self.url_map.bind_to_environ(environ)
        kind: str | None = None
        throttled = False
        try:
            endpoint, args = adapter.match()
            kind = self.limit_kinds.get(endpoint)
            # The limiter stands in front of the application: a refused create makes no job,
            # and a refused request consumes no injected fault.
            wait = 0.0 if kind is None else self.state.limits.take(kind)
            if wait > 0:
                throttled = True
                outcome: _Outcome = _Outcome(
                    _throttled(wait, standard=self.state.config.standard_headers)
                )
            else:
                outcome = getattr(self, f"on_{endpoint}")(request, **args)
        except NotFound:
            outcome = _Outcome(_error("Route not found", 404))
        except MethodNotAllowed:
            outcome = _Outcome(_error("Method not allowed", 405))
        except HTTPException as exc:
            outcome = _Outcome(_error(exc.description or exc.name, exc.code or 500))
        else:
            if outcome.job_id is None:
                outcome.job_id = self._job_id_of(args)
        self.state.log.append(
            RecordedRequest(
                origin=self.origin,
                method=request.method,
                path=request.path,
                query=request.args.to_dict(),
                headers=Headers(request.headers.items()),
                form=request.form.to_dict() if request.method == "POST" else {},
                status=outcome.response.status_code,
                timestamp=arrived,
                job_id=outcome.job_id,
                fault=outcome.fault,
                client_port=int(environ.get("REMOTE_PORT") or 0),
                kind=kind,
                throttled=throttled,
            )
        )
        return outcome.response(environ, start_response)

    def _job_id_of(self, args: Mapping[str, Any]) -> str | None:
        if "job_id" in args:
            return str(args["job_id"])
        job = self.state.job_for_file(str(args.get("file_name", "")))
        return job.id if job else None

    def with_faults(
        self,
        request: Request,
        route: str,
        normal: Callable[[Fault | None], _Outcome],
    ) -> _Outcome:
        """Answer through the next queued fault for ``route``, if any."""
        fault = self.state.faults.take(route)
        if fault is None:
            return normal(None)
        if fault.kind in ("http", "malformed_json", "unsuccessful", "not_image"):
            response = Response(fault.body, status=fault.status, content_type=fault.content_type)
            for name, value in fault.response_headers():
                response.headers[name] = value
            return _Outcome(response, fault=fault.kind)
        if fault.kind == "slow":
            self.state.stopping.wait(fault.seconds)
            return replace(normal(None), fault="slow")
        if fault.kind in ("reset", "truncated"):
            outcome = normal(None)
            request.environ[CUT_KEY] = (fault.kind, fault.fraction)
            return replace(outcome, fault=fault.kind)
        # wrong_size / bomb: only the download handler knows what to do with them.
        outcome = normal(fault)
        return replace(outcome, fault=fault.kind)

    # ------------------------------------------------------------ result files

    def serve_file(
        self, request: Request, user_id: str, file_name: str, *, redirect_to: str | None
    ) -> _Outcome:
        """Serve a result file, or redirect to ``redirect_to`` (a path on the second origin)."""
        job = self.state.job_for_file(file_name)
        if job is None or job.user_id != user_id or job.status() != COMPLETED:
            return _Outcome(_error("File not found", 404), job.id if job else None)
        refusal = self.state.check_signature(request.path, request.args.to_dict())
        if refusal is not None:
            return _Outcome(_access_denied(refusal), job.id)
        if redirect_to is not None:
            expires = request.args.get("expires")
            query = self.state.signed_query(
                redirect_to, int(expires) if expires and expires.isdigit() else None
            )
            response = Response(
                b"", status=self.state.faults.redirect_status, content_type="text/plain"
            )
            response.headers["Location"] = self.state.second_url + redirect_to + query
            return _Outcome(response, job.id)

        def normal(fault: Fault | None) -> _Outcome:
            data = job.result or b""
            if fault is not None and fault.kind == "wrong_size":
                width = fault.width or max(64, job.width // 2)
                height = fault.height or max(64, job.height // 2)
                data = render_image(job.prompt, job.model, job.seed, width, height)
            elif fault is not None and fault.kind == "bomb":
                data = decompression_bomb(
                    fault.width or 40_000, fault.height or 40_000, fault.image_format
                )
                mime = "image/png" if fault.image_format == "png" else "image/jpeg"
                return _Outcome(Response(data, content_type=mime), job.id)
            response = Response(data, content_type="image/jpeg")
            response.headers["Cache-Control"] = "public, max-age=31536000"
            return _Outcome(response, job.id)

        return self.with_faults(request, "download", normal)


class ApiApp(_Origin):
    """The API origin: create, status, and result files on the API's own host."""

    origin = "main"
    url_map = Map(
        [
            Rule("/api/v1/image/generate", endpoint="create", methods=["POST"]),
            Rule("/api/v1/image/jobs/<job_id>", endpoint="status", methods=["GET"]),
            Rule(f"{UPLOADS_PREFIX}/<user_id>/<file_name>", endpoint="upload", methods=["GET"]),
        ],
        strict_slashes=False,
    )
    limit_kinds: ClassVar[Mapping[str, str]] = {
        "create": "create",
        "status": "status",
        "upload": "download",
    }

    def _auth(self, request: Request) -> Response | None:
        key = request.headers.get("X-API-Key", "")
        if not key:
            return _error("API key is required", 401)
        if not hmac.compare_digest(key.encode(), self.state.config.api_key.encode()):
            return _error("Invalid API key", 401)
        return None

    def on_create(self, request: Request) -> _Outcome:
        def normal(_: Fault | None) -> _Outcome:
            refused = self._auth(request)
            if refused is not None:
                return _Outcome(refused)
            form = request.form.to_dict()
            try:
                job = self.state.create_job(form)
            except ValidationError as exc:
                return _Outcome(_error(str(exc), 400))
            payload = {
                "success": True,
                "data": {"jobId": job.id, "status": "PENDING"},
                "message": "Image generation job created successfully",
            }
            return _Outcome(_json(payload), job.id)

        return self.with_faults(request, "create", normal)

    def on_status(self, request: Request, job_id: str) -> _Outcome:
        def normal(_: Fault | None) -> _Outcome:
            refused = self._auth(request)
            if refused is not None:
                return _Outcome(refused, job_id)
            job = self.state.job(job_id)
            if job is None:
                return _Outcome(_error("Job not found", 404), job_id)
            record = self.record(job, request.host_url.rstrip("/"))
            return _Outcome(_json({"success": True, "data": record}), job_id)

        return self.with_faults(request, "status", normal)

    def on_upload(self, request: Request, user_id: str, file_name: str) -> _Outcome:
        hops = self.state.faults.result_redirects
        target = None
        if hops > 0:
            target = _second_path(user_id, file_name, hops - 1)
        return self.serve_file(request, user_id, file_name, redirect_to=target)

    def record(self, job: EmulatedJob, base_url: str) -> dict[str, Any]:
        """The job record, exactly as the reference shapes it (plus ``progress``)."""
        faults, state = self.state.faults, self.state
        status = job.status()
        shown = faults.pending_status if status == PENDING else status
        if faults.lowercase_status:
            shown = shown.lower()
        record: dict[str, Any] = {
            "id": job.id,
            "userId": job.user_id,
            "prompt": job.prompt,
            "parameters": dict(job.parameters),
            "status": shown,
        }
        if status != FAILED and state.config.report_progress and faults.progress != "missing":
            value = job.progress()
            if faults.progress == "string":
                record["progress"] = str(value)
            elif faults.progress == "float":
                record["progress"] = value + 0.5 if value < 100 else 100.0
            else:
                record["progress"] = value

        image_url: str | None = None
        link: str | None = None
        if status == COMPLETED:
            hops = faults.result_redirects
            second_path = _second_path(job.user_id, job.file_name, hops)
            signed = state.signed_query(second_path)
            link = state.second_url + second_path + (f"{signed}&raw=1" if signed else "?raw=1")
            main_path = f"{UPLOADS_PREFIX}/{job.user_id}/{job.file_name}"
            mode = faults.result_url
            if mode == "absolute":
                image_url = base_url + main_path + state.signed_query(main_path)
            elif mode == "relative":
                image_url = main_path + state.signed_query(main_path)
            elif mode == "second_origin":
                image_url = state.second_url + second_path + state.signed_query(second_path)
        record["imageUrl"] = image_url
        record["processedImageUrl"] = image_url
        record["storagePath"] = None
        record["publicId"] = None
        if status == PENDING:
            api_response: dict[str, Any] | None = None
        else:
            api_response = {"link": link, "success": status == COMPLETED}
        record["metadata"] = {
            "apiResponse": api_response,
            "has_input_image": bool(job.image_url),
            "processingTimeMs": job.processing_ms(),
            "uploaded_image_path": None,
        }
        record["resolution"] = None
        record["errorMessage"] = job.error_message
        record["creditsUsed"] = 1
        record["createdAt"] = _iso(job.created_at)
        record["updatedAt"] = _iso(job.updated_at())
        return record


def _second_path(user_id: str, file_name: str, hops: int) -> str:
    if hops > 0:
        return f"/hop/{hops}/{user_id}/{file_name}"
    return f"/files/{user_id}/{file_name}"


class SecondOriginApp(_Origin):
    """The second origin: result files only, never asks for (and must never see) the key."""

    origin = "second"
    url_map = Map(
        [
            Rule("/files/<user_id>/<file_name>", endpoint="file", methods=["GET"]),
            Rule("/hop/<int:hops>/<user_id>/<file_name>", endpoint="hop", methods=["GET"]),
        ],
        strict_slashes=False,
    )
    limit_kinds: ClassVar[Mapping[str, str]] = {"file": "download", "hop": "download"}

    def on_file(self, request: Request, user_id: str, file_name: str) -> _Outcome:
        return self.serve_file(request, user_id, file_name, redirect_to=None)

    def on_hop(self, request: Request, hops: int, user_id: str, file_name: str) -> _Outcome:
        target = _second_path(user_id, file_name, hops - 1)
        return self.serve_file(request, user_id, file_name, redirect_to=target)
