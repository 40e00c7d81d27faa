"""``%%miragic`` (generate from the cell's prompt); ``%miragic`` hands its line to the
subcommands in ``commands.py``.

The magic blocks while jobs run: a kernel processes no widget events during a cell, so the
kernel interrupt is how a wait is stopped. Jobs run in worker threads; the cell's own thread
only draws progress and handles the interrupt, so every display call stays on the cell's thread.

Expected failures (bad options, a missing key, a failed job, a timeout) fail the cell with one
short line; ``%config Miragic.short_errors = False`` shows full tracebacks instead.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import queue
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display
from traitlets import Bool, Enum, Float, Int, TraitError, Unicode, observe, validate
from traitlets.config import Configurable

from miragic_nb import session as builtin
from miragic_nb._core import config
from miragic_nb._core.errors import (
    APIError,
    InvalidRequestError,
    JobFailedError,
    JobTimeoutError,
    MiragicError,
    MissingAPIKeyError,
)
from miragic_nb._core.polling import PollSchedule
from miragic_nb._core.request import (
    MAX_SIDE,
    MIN_SIDE,
    MODELS,
    GenerationRequest,
    parse_decimal,
)
from miragic_nb._engine import budget
from miragic_nb._engine.engine import Cancellation, CancelledBeforeStart, JobHandle, Workers
from miragic_nb._engine.image_inputs import held_value, restore_held_names, url_to_check
from miragic_nb._magic import sweeps
from miragic_nb._magic.arguments import seconds, variable_name
from miragic_nb._views.gallery import ImageGrid
from miragic_nb._views.progress import JobProgress, make_progress

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from miragic_nb import History

#: Most jobs one cell may start (prompts × seeds × models); they run through the engine,
#: at most ``Miragic.max_concurrency`` at a time.
MAX_JOBS = 64
#: The highest ``Miragic.max_concurrency``.
MAX_CONCURRENCY = 16
#: Seconds between progress redraws while no status read arrives (elapsed time keeps moving).
TICK_SECONDS = 0.25
_SIZE = re.compile(r"^\s*(\d+)\s*[x×X*]\s*(\d+)\s*$")


_Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
# IPython's decorators are untyped; these typed names keep the magic checked by mypy --strict.
_magic_arguments = cast(Callable[..., _Decorator], magic_arguments)
_argument = cast(Callable[..., _Decorator], argument)
_line_cell_magic = cast(_Decorator, line_cell_magic)
_parse_argstring = cast(Callable[[Callable[..., Any], str], argparse.Namespace], parse_argstring)
_display: Callable[..., Any] = display


def _post(events: queue.Queue[_Slot], slot: _Slot, *_: object) -> None:
    """Tell the cell's thread that ``slot`` changed (called from the engine's workers)."""
    events.put(slot)


def _slot_error(slot: _Slot) -> BaseException:
    """Why a slot's job gave no image."""
    handle = slot.handle
    if handle is None:
        return RuntimeError("the job was never started")
    if handle.error is not None:
        return handle.error
    future = handle.future
    if future is not None and future.done() and not future.cancelled():
        error = future.exception()
        if error is not None:
            return error
    return CancelledBeforeStart("the job was stopped before it was sent; no credit used")


class _ShortFailure(Exception):
    """Raised into the cell for expected failures: prints one line, still fails the cell."""


def _side(text: str) -> int:
    value = parse_decimal(text)
    if value is None or not MIN_SIDE <= value <= MAX_SIDE:
        raise argparse.ArgumentTypeError(
            f"must be an integer from {MIN_SIDE} to {MAX_SIDE}, got {text!r}"
        )
    return value


def _count(text: str) -> int:
    value = parse_decimal(text)
    if value is None or not 1 <= value <= MAX_JOBS:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {MAX_JOBS}, got {text!r}")
    return value


def _size(text: str) -> tuple[int, int]:
    match = _SIZE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"must look like 1024x768, got {text!r}")
    return _side(match.group(1)), _side(match.group(2))


@dataclass
class _Slot:
    """One job of a cell as the cell shows it: a label and a progress view over its handle."""

    label: str
    request: GenerationRequest
    progress: JobProgress
    #: The job to pick up instead of creating one (``%miragic resume``).
    resume_id: str | None = None
    handle: JobHandle | None = None


@magics_class
class Miragic(Magics, Configurable):
    """Defaults for ``%%miragic``; set with ``%config Miragic.<name> = value`` or
    ``c.Miragic.<name>`` in ``ipython_config.py``. The API key is never a setting."""

    model = Unicode("flux", help=f"Default model: one of {', '.join(MODELS)}.").tag(config=True)
    width = Int(1024, help=f"Default width in pixels ({MIN_SIDE}-{MAX_SIDE}).").tag(config=True)
    height = Int(1024, help=f"Default height in pixels ({MIN_SIDE}-{MAX_SIDE}).").tag(config=True)
    timeout = Float(
        config.DEFAULT_JOB_TIMEOUT_S,
        help="Seconds to wait for a job before giving up (the job is not lost: "
        "%miragic resume <id>).",
    ).tag(config=True)
    base_url = Unicode(
        "", help="API base URL; empty: MIRAGIC_BASE_URL, else https://backend.miragic.ai."
    ).tag(config=True)
    offline_fallback = Bool(
        True,
        help="Use the built-in offline emulator when no key is configured anywhere "
        "(MIRAGIC_OFFLINE_FALLBACK=0 also turns it off).",
    ).tag(config=True)
    short_errors = Bool(
        True, help="Show expected failures as one line; False shows full tracebacks."
    ).tag(config=True)
    home = Unicode(
        "", help="History directory; empty: MIRAGIC_HOME, else the user data directory."
    ).tag(config=True)
    reuse = Bool(
        True,
        help="Reuse a saved result for a request with an explicit --seed that was already "
        "made (no credit spent); --fresh overrides per cell.",
    ).tag(config=True)
    progress = Enum(
        ("auto", "widgets", "text"),
        "auto",
        help="Progress view: widgets in a notebook kernel and text in a terminal (auto), "
        "or forced.",
    ).tag(config=True)
    max_concurrency = Int(8, help="Jobs a cell runs at the same time (--n, model lists).").tag(
        config=True
    )
    max_credits = Int(
        None,
        allow_none=True,
        help="Credits this kernel session may spend (None: no limit); a cell that could go "
        "past it is refused before anything is sent.",
    ).tag(config=True)
    poll_interval = Float(0.25, help="Seconds before the first status read.").tag(config=True)
    max_poll_interval = Float(5.0, help="Longest pause between status reads.").tag(config=True)

    @property
    def _ip(self) -> Any:
        """The shell this instance was registered with (always set once loaded)."""
        if self.shell is None:
            raise UsageError("%miragic: load the extension with %load_ext miragic_nb")
        return self.shell

    # -- trait validation --------------------------------------------------------------------

    @observe("max_credits")
    def _credit_cap_changed(self, change: dict[str, Any]) -> None:
        # %config Miragic.max_credits caps every face's jobs, not only this magic's cells.
        builtin.set_credit_cap(change["new"])

    @validate("model")
    def _check_model(self, proposal: Any) -> str:
        value = str(proposal["value"]).strip().lower()
        if value not in MODELS:
            raise TraitError(f"Miragic.model must be one of {', '.join(MODELS)}, got {value!r}")
        return value

    @validate("width", "height")
    def _check_side(self, proposal: Any) -> int:
        value = proposal["value"]
        if not MIN_SIDE <= value <= MAX_SIDE:
            raise TraitError(
                f"Miragic.{proposal['trait'].name} must be from {MIN_SIDE} to {MAX_SIDE}, "
                f"got {value}"
            )
        return int(value)

    @validate("timeout", "poll_interval", "max_poll_interval")
    def _check_positive(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not value > 0:
            raise TraitError(f"Miragic.{proposal['trait'].name} must be positive, got {value}")
        return value

    @validate("max_concurrency")
    def _check_concurrency(self, proposal: Any) -> int:
        value = int(proposal["value"])
        if not 1 <= value <= MAX_CONCURRENCY:
            raise TraitError(f"Miragic.max_concurrency must be from 1 to {MAX_CONCURRENCY}")
        return value

    # -- the magic -------------------------------------------------------------------------

    @_magic_arguments(name="%miragic")  # the usage reads "%%miragic": a cell magic first
    @_argument(
        "-m",
        "--model",
        help=f"model: {', '.join(MODELS)}; a comma list (flux,turbo) compares them side by side",
    )
    @_argument("-W", "--width", type=_side, help=f"width in pixels, {MIN_SIDE}-{MAX_SIDE}")
    @_argument("-H", "--height", type=_side, help=f"height in pixels, {MIN_SIDE}-{MAX_SIDE}")
    @_argument("--size", type=_size, metavar="WxH", help="width and height at once: 1024x768")
    @_argument(
        "--image-url",
        help="input image for image-to-image (model kontext only): a URL, a job id, a file, "
        "or {img} for a result or picture you hold",
    )
    @_argument(
        "--seed",
        type=sweeps.seeds,
        help="non-negative integer (same seed, same picture), or a range 1..8: a job per seed",
    )
    @_argument(
        "--sweep",
        metavar="NAME",
        help="a job per value of the list variable NAME, written {NAME} in the prompt",
    )
    @_argument(
        "--dry-run", action="store_true", help="print the planned jobs and credits; send nothing"
    )
    @_argument(
        "--enhance", action=argparse.BooleanOptionalAction, help="let the API rewrite the prompt"
    )
    @_argument("--safe", action=argparse.BooleanOptionalAction, help="strict content filter")
    @_argument("--private", action=argparse.BooleanOptionalAction, help="keep out of public feeds")
    @_argument("--nologo", action=argparse.BooleanOptionalAction, help="no logo overlay")
    @_argument("--timeout", type=seconds, help="seconds to wait before giving up")
    @_argument(
        "-n",
        "--n",
        type=_count,
        default=1,
        metavar="N",
        help=f"run N jobs at once (seeds S, S+1, ... with --seed S); 1-{MAX_JOBS}",
    )
    @_argument("--fresh", action="store_true", help="always start a new job; never reuse")
    @_argument(
        "-o", "--out", type=variable_name, metavar="NAME", help="also store the result in NAME"
    )
    @_line_cell_magic
    def miragic(self, line: str, cell: str | None = None) -> Any:
        """Generate an image from the cell's prompt with the Miragic API.

        %%miragic [options]
        A prompt; {name}, {name.attr} and {name[key]} come from your variables.

        The cell's value is a PIL image (a grid of them with --n, a model list, a seed range
        --seed 1..8 or --sweep NAME over a list variable, labelled by what was swept).
        --dry-run prints the jobs and the credits they may cost, and sends nothing.
        Line form: %miragic SUBCOMMAND (models, history, usage, resume...); %miragic help
        lists them all.
        """
        try:
            if cell is None:
                return self._line(line)
            return self._cell(line, cell)
        except MiragicError as exc:
            raise self._shorten(exc) from None

    # -- %%miragic -------------------------------------------------------------------------

    def _cell(self, line: str, cell: str) -> Any:
        try:
            args = _parse_argstring(self.miragic, restore_held_names(line, self._namespace()))
        except UsageError as exc:
            raise UsageError(f"%%miragic: {exc} (see %%miragic? for the options)") from None
        body = cell.strip()
        quiet = body.endswith(";")
        body = body.rstrip(";").strip() if quiet else body
        try:
            variants = sweeps.prompts(body, self._namespace(), args.sweep)
        except ValueError as exc:
            raise UsageError(f"%%miragic: {exc}") from None
        if not all(variant.prompt.strip() for variant in variants):
            raise UsageError("%%miragic: the cell has no prompt; write it below the %%miragic line")
        requests, sweep_labels = self._requests(args, variants)
        if args.dry_run:
            _print_plan(requests)
            return None
        client = self._resolve().client
        engine = client.engine
        if not engine.emulator:  # the built-in emulator's jobs cost nothing
            budget.check_session(
                engine.history, planned=len(requests), max_credits=self.max_credits
            )
        if args.image_url is not None:
            # Resolved once for every job of the cell: one status read or one upload.
            try:
                url = client.resolve_image_url(held_value(args.image_url, self._namespace()))
                requests = [replace(request, image_url=url) for request in requests]
            except InvalidRequestError as exc:
                raise UsageError(f"%%miragic: {exc.message}") from None
        slots = self._slots(requests, sweep_labels, many=len(requests) > 1)

        def start(handle: JobHandle, workers: Workers) -> object:
            return engine.start(
                handle,
                timeout=args.timeout or self.timeout,
                reuse=self.reuse and not args.fresh,
                workers=workers,
            )

        self._run(slots, start)
        return self._finish(slots, args.out, quiet, columns=self._columns(requests, sweep_labels))

    def _requests(
        self, args: argparse.Namespace, variants: list[sweeps.Variant]
    ) -> tuple[list[GenerationRequest], list[str]]:
        """Every request of the cell, validated before anything is sent, with the swept
        value each was made with."""
        names = (args.model or self.model).split(",")
        models = list(dict.fromkeys(m.strip().lower() for m in names if m.strip()))
        if not models:
            raise UsageError(f"%%miragic: --model needs a model name: {', '.join(MODELS)}")
        unknown = [m for m in models if m not in MODELS]
        if unknown:
            raise UsageError(
                f"%%miragic: unknown model {unknown[0]!r}; choose from {', '.join(MODELS)} "
                "(or a comma list such as flux,turbo)"
            )
        if args.size and (args.width or args.height):
            raise UsageError("%%miragic: give either --size WxH or --width/--height, not both")
        width, height = args.size or (args.width or self.width, args.height or self.height)
        seeds = _cell_seeds(args)
        jobs = len(variants) * len(seeds) * len(models)
        if jobs > MAX_JOBS:
            raise UsageError(
                f"%%miragic: {len(variants)} prompts × {len(seeds)} seeds × {len(models)} models "
                f"is {jobs} jobs; at most {MAX_JOBS} per cell"
            )
        requests, labels = [], []
        try:
            # Seed-major order: with a model list, each grid row is one seed, each column a model.
            for variant, seed, model in itertools.product(variants, seeds, models):
                labels.append(variant.label)
                requests.append(
                    GenerationRequest(
                        variant.prompt,
                        model=model,
                        width=width,
                        height=height,
                        image_url=url_to_check(args.image_url),
                        seed=seed,
                        enhance=args.enhance,
                        safe=args.safe,
                        private=args.private,
                        nologo=args.nologo,
                    )
                )
        except InvalidRequestError as exc:
            raise UsageError(f"%%miragic: {exc.message}") from None
        return requests, labels

    def _slots(
        self, requests: list[GenerationRequest], sweep_labels: list[str], *, many: bool
    ) -> list[_Slot]:
        models = len({r.model for r in requests})
        compare = models > 1
        per_model = len(requests) // models // len(set(sweep_labels))
        slots = []
        for index, request in enumerate(requests):
            parts = [sweep_labels[index]] if sweep_labels[index] else []
            if compare:  # one job: the caption names the model
                parts.append(request.model)
            if per_model > 1:
                seed = request.seed
                parts.append(f"seed {seed}" if seed is not None else f"#{index // models + 1}")
            label = " · ".join(parts)
            progress = self._make_progress(label, many=many)
            slots.append(_Slot(label=label, request=request, progress=progress))
        return slots

    def _columns(self, requests: list[GenerationRequest], sweep_labels: list[str]) -> int:
        models = len({r.model for r in requests})
        prompts = len(set(sweep_labels))
        seeds = len(requests) // models // prompts
        if models > 1:
            return models
        # A sweep over prompts and seeds: a row per prompt, a column per seed.
        return seeds if prompts > 1 and seeds > 1 else min(len(requests), 4)

    # -- running jobs ----------------------------------------------------------------------

    def _run(self, slots: list[_Slot], start: Callable[[JobHandle, Workers], object]) -> None:
        """Start each slot's job on the engine; draw progress here; handle the interrupt.

        The engine's workers only put events on a queue: every widget and print call happens
        on this thread, which is the cell's own.
        """
        events: queue.Queue[_Slot] = queue.Queue()
        for slot in slots:
            slot.progress.show()
        # A pool per cell: its size is this cell's concurrency, and its queue dies with the cell.
        workers = Workers(max_workers=min(len(slots), self.max_concurrency))
        # One switch for the cell: once interrupted, none of its jobs sends a create.
        cancellation = Cancellation()
        try:
            for slot in slots:
                post = functools.partial(_post, events, slot)
                request = None if slot.resume_id else slot.request
                slot.handle = JobHandle(request, job_id=slot.resume_id, cancellation=cancellation)
                slot.handle.subscribe(post)
                start(slot.handle, workers)
                assert slot.handle.future is not None
                slot.handle.future.add_done_callback(post)
            self._drain(events, slots)
        except KeyboardInterrupt:
            self._stop(slots, cancellation, workers)
            self._interrupted(slots)
            raise
        finally:
            # However the cell ends, no worker keeps polling and no queued job starts.
            self._stop(slots, cancellation, workers)

    @staticmethod
    def _stop(slots: list[_Slot], cancellation: Cancellation, workers: Workers) -> None:
        cancellation.cancel()  # first, for every job at once
        for slot in slots:
            if slot.handle is not None:
                slot.handle.cancel()
        workers.shutdown()

    def _drain(self, events: queue.Queue[_Slot], slots: list[_Slot]) -> None:
        settled: set[int] = set()
        while len(settled) < len(slots):
            try:
                slot = events.get(timeout=TICK_SECONDS)
            except queue.Empty:
                for waiting in slots:  # no status read arrived: keep the elapsed time moving
                    if id(waiting) not in settled:
                        waiting.progress.refresh()
                continue
            handle = slot.handle
            if handle is None or id(slot) in settled:
                continue
            if handle.future is not None and handle.future.done():
                settled.add(id(slot))
                self._settle(slot, handle)
            else:
                slot.progress.set_state(handle.state, percent=handle.progress, job_id=handle.id)

    def _settle(self, slot: _Slot, handle: JobHandle) -> None:
        if handle.result is None:
            error = _slot_error(slot)
            # The row says what happened; the cell's error line alone says how to resume.
            slot.progress.fail(_one_line(error, ""))
            return
        widget = bool(getattr(slot.progress, "widget", None))
        # In JupyterLab text next to an image is hidden: the widget row becomes the caption.
        caption = handle.result.caption() if widget or handle.reused else ""
        slot.progress.succeed(caption)

    def _interrupted(self, slots: list[_Slot]) -> None:
        """After Ctrl-C / kernel interrupt: say which jobs exist and how to pick them up."""
        # A create request already on the wire may still return a job id: give it a moment.
        from concurrent.futures import wait

        futures = [s.handle.future for s in slots if s.handle and s.handle.future]
        with contextlib.suppress(KeyboardInterrupt):
            wait(futures, timeout=2.0)
        handles = [s.handle for s in slots if s.handle is not None]
        ids = [h.id for h in handles if h.id and h.result is None]
        in_flight = sum(1 for h in handles if h.sent and not h.id)
        for slot in slots:
            if slot.handle is None or slot.handle.result is None:
                slot.progress.fail("interrupted")
        if ids:
            print("Interrupted: stopped waiting. The job(s) may still finish on the server:")
            for job_id in ids:
                print(f"    %miragic resume {job_id}")
        if in_flight:
            print(
                f"{in_flight} create request(s) had not been answered; if the server created "
                "the job, `%miragic history` lists it."
            )
        if not ids and not in_flight:
            print("Interrupted before any job was created; no credit was spent.")

    def _resume_hint(self, exc: BaseException) -> str:
        job_id = getattr(exc, "job_id", None)
        if not job_id or isinstance(exc, JobFailedError):
            return ""
        if isinstance(exc, APIError) and exc.status_code == 404:
            return ""  # the server does not know the job: there is nothing to resume
        return f"; it may still finish: %miragic resume {job_id}"

    # -- results ---------------------------------------------------------------------------

    def _finish(self, slots: list[_Slot], out: str | None, quiet: bool, *, columns: int) -> Any:
        images = [s.handle.result for s in slots if s.handle and s.handle.result is not None]
        failed = [s for s in slots if s.handle is None or s.handle.result is None]
        result: Any
        if len(slots) == 1:
            result = images[0] if images else None
        else:
            labels = [s.label for s in slots if s.handle and s.handle.result is not None]
            result = ImageGrid(images, labels=labels, columns=columns)
        if out and (images or len(slots) > 1):
            self._ip.user_ns[out] = result
        if failed:
            if len(slots) > 1 and images:
                _display(result)  # keep what succeeded visible before the cell fails
            raise self._slot_failure(failed, len(slots))
        return None if quiet else result

    def _slot_failure(self, failed: list[_Slot], total: int) -> BaseException:
        first = _slot_error(failed[0])
        if total == 1 and isinstance(first, MiragicError):
            return self._shorten(first)
        if total == 1:
            return first
        lines = [f"{len(failed)} of {total} jobs failed:"]
        lines += [
            f"  {s.label}: {_one_line(error, self._resume_hint(error))}"
            for s, error in ((s, _slot_error(s)) for s in failed)
        ]
        failure = _ShortFailure("\n".join(lines))
        return self._shorten(failure, lines=lines) if self.short_errors else failure

    def _shorten(self, exc: BaseException, *, lines: list[str] | None = None) -> BaseException:
        """Give an expected failure IPython's one-line rendering (unless short_errors is off)."""
        if not self.short_errors:
            return exc
        text = lines or [f"{type(exc).__name__}: {_one_line(exc, self._resume_hint(exc))}"]
        exc._render_traceback_ = lambda: list(text)  # type: ignore[attr-defined]
        return exc

    # -- %miragic ----------------------------------------------------------------------------

    def _line(self, line: str) -> Any:
        # Imported here: the subcommands import this module, and a cell never needs them.
        from miragic_nb._magic.commands import run_line

        return run_line(self, line)

    # -- helpers ---------------------------------------------------------------------------

    def resume(self, job_id: str, *, out: str | None, timeout: float | None) -> Any:
        """``%miragic resume``: wait again for a job already created, show and return it."""
        engine = self._resolve().client.engine
        slot = _Slot(
            label="resume",
            request=GenerationRequest("(resumed job)"),
            progress=self._make_progress("resume", many=False),
            resume_id=job_id,
        )
        self._run(
            [slot],
            lambda handle, workers: engine.start(
                handle, timeout=timeout or self.timeout, workers=workers
            ),
        )
        return self._finish([slot], out, False, columns=1)

    def settings(self) -> builtin.Settings:
        """The resolved settings every face of this shell uses (``%config Miragic.*``)."""
        return builtin.Settings(
            base_url=self.base_url or None,
            home=self.home or None,
            timeout=self.timeout,
            offline_fallback=self.offline_fallback,
            poll_schedule=self._poll_schedule(),
        )

    def _resolve(self) -> builtin.ResolvedClient:
        resolved = builtin.resolve(self.settings())
        if resolved.notice:
            print(resolved.notice)
        return resolved

    def _poll_schedule(self) -> PollSchedule:
        first = self.poll_interval
        longest = max(self.max_poll_interval, first)
        return PollSchedule(initial_delay=first, max_delay=longest, min_delay=min(0.05, first))

    def _history(self) -> History:
        return builtin.history(self.settings())

    def _make_progress(self, label: str, *, many: bool) -> JobProgress:
        widgets = {"auto": None, "widgets": True, "text": False}[self.progress]
        # Several text lines rewritten with \r would overwrite each other: print changes instead.
        return make_progress(label, widgets=widgets, rewrite=False if many else None)

    def _namespace(self) -> dict[str, Any]:
        """The user's variables, without IPython's own (``exit``, ``In``...) unless reassigned."""
        hidden = getattr(self._ip, "user_ns_hidden", {})
        return {
            name: value
            for name, value in self._ip.user_ns.items()
            if name not in hidden or hidden[name] is not value
        }


def _cell_seeds(args: argparse.Namespace) -> list[int | None]:
    """The cell's seeds: a range, or ``--n`` of them from ``--seed S`` (None: unseeded)."""
    if args.seed is None:
        return [None] * args.n
    if len(args.seed) > 1:
        if args.n != 1:
            raise UsageError("%%miragic: give either --n or a seed range, not both")
        return list(args.seed)
    return [args.seed[0] + index for index in range(args.n)]


def _print_plan(requests: list[GenerationRequest]) -> None:
    """``--dry-run``: the jobs a cell would start, and what they may cost."""
    lines = [
        f"{request.model} {request.width}×{request.height}"
        + ("" if request.seed is None else f" seed {request.seed}")
        + f": {request.prompt}"
        for request in requests
    ]
    # `--n 20` without a seed is twenty identical jobs: one line says so.
    for line, same in itertools.groupby(lines):
        times = len(list(same))
        print(f"  {times} × {line}" if times > 1 else f"  {line}")
    count = len(requests)
    print(
        f"{count} job{'s' * (count != 1)}, up to {count} credit{'s' * (count != 1)} "
        "(a seeded job whose result is saved comes free); nothing was sent"
    )


def _one_line(exc: BaseException | None, hint: str = "") -> str:
    if isinstance(exc, JobTimeoutError) and exc.job_id:
        return f"job {exc.job_id} did not finish in time{hint}"
    if isinstance(exc, MissingAPIKeyError):
        return str(exc)
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text + hint


# -- extension entry points --------------------------------------------------------------------


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """Register ``%%miragic``/``%miragic`` and make ``Miragic`` configurable via ``%config``."""
    unload_ipython_extension(ipython)  # loading twice must not leave two configurables
    # Magics.__init__ adds the instance to shell.configurables (for %config) and takes the
    # shell as its traitlets parent, so c.Miragic.* from ipython_config.py applies.
    magic = Miragic(shell=ipython)
    ipython.register_magics(magic)
    # Every face of this process now reads these settings and keeps to this credit cap.
    builtin.attach(magic.settings, max_credits=magic.max_credits)
    # IPython asks Pillow for PNG *and* JPEG, so every crop, thumbnail or blend of a result
    # would be stored twice, once lossily. Frontends prefer the PNG: keep only that.
    _pil_jpeg_formatter(ipython).for_type(_pil_image_class(), _no_jpeg)


def _no_jpeg(image: Any) -> None:
    return None


def _pil_jpeg_formatter(ipython: InteractiveShell) -> Any:
    formatter: Any = ipython.display_formatter
    return formatter.formatters["image/jpeg"]


def _pil_image_class() -> type:
    from PIL import Image

    return Image.Image


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    builtin.detach()
    # By class name: after %reload_ext an older Miragic class may still be registered.
    ipython.configurables[:] = [
        c for c in ipython.configurables if type(c).__name__ != Miragic.__name__
    ]
    manager: Any = ipython.magics_manager
    for kind in ("line", "cell"):
        manager.magics[kind].pop("miragic", None)
    manager.registry.pop("Miragic", None)
    jpeg = _pil_jpeg_formatter(ipython)
    # By name, like the magics above: %reload_ext leaves the older module's function behind.
    if getattr(jpeg.type_printers.get(_pil_image_class()), "__name__", "") == _no_jpeg.__name__:
        jpeg.pop(_pil_image_class())


__all__ = ["Miragic", "load_ipython_extension", "unload_ipython_extension"]
