"""``python -m miragic_nb batch FILE --out DIR``: a batch from a file, images streamed to disk.

FILE is ``.txt`` (a prompt per line), ``.csv`` (a header with ``prompt`` and any of the
``generate`` option names) or ``.jsonl`` (an object per line). Every line is checked before
anything is sent; a bad one is refused naming its line. Each image is written to DIR as its
job finishes (``0007-a-red-fox.png``: the item's index and a slug of its prompt) and dropped
from memory; ``DIR/manifest.jsonl`` lists every item (index, prompt, options, job id, status,
file, error). Rerun with the same arguments after a crash or ``kill -9``: finished items come
from the store, open jobs are picked up by id, nothing is paid for twice.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import signal
import sys
import threading
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from miragic_nb._core.embedded import image_extension
from miragic_nb._core.errors import (
    BudgetExceededError,
    InvalidRequestError,
    MissingAPIKeyError,
    UncertainJobError,
)
from miragic_nb._core.filenames import write_file_atomically
from miragic_nb._core.request import FLAGS, GenerationRequest, parse_decimal
from miragic_nb._engine.batch import Batch, BatchResult, check_budget, requests_of
from miragic_nb._engine.group import CLI, GroupInterrupted, JobEnd
from miragic_nb._engine.pacing import AUTO_CEILING
from miragic_nb._views.batch_progress import batch_progress

if TYPE_CHECKING:
    from miragic_nb.client import Client

MANIFEST = "manifest.jsonl"
_WHOLE_NUMBERS = ("width", "height", "seed")
_COLUMNS = ("prompt", "model", *_WHOLE_NUMBERS, "image_url", *FLAGS)
_SIZE = re.compile(r"(\d{1,5})[xX×](\d{1,5})")


def terminal_text(text: str) -> str:
    """A docstring's text for a terminal: without the reST markup of literals."""
    return text.replace("``", "")


class BadInput(Exception):
    """The file or the arguments cannot be run; the message names the line."""


def add_parser(commands: Any) -> None:
    """The ``batch`` subcommand of ``python -m miragic_nb``."""
    parser = commands.add_parser(
        "batch",
        help="generate an image per line of a .txt, .csv or .jsonl file, resumably",
        description=terminal_text(__doc__.split("\n\n", 1)[1] if __doc__ else ""),
    )
    parser.add_argument(
        "file",
        type=Path,
        metavar="FILE",
        help=".txt (a prompt per line), .csv (a header row) or .jsonl (an object per line)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help=f"folder for the images and {MANIFEST} (created if missing); the same FILE "
        "into the same DIR resumes an earlier run",
    )
    parser.add_argument("--model", help="model for items that name none")
    parser.add_argument("--size", metavar="WxH", help="size for items that give none")
    parser.add_argument("--seed", type=int, help="seed for items that give none")
    parser.add_argument(
        "--concurrency",
        default="auto",
        metavar="N|auto",
        help=f"most jobs in flight at once (default: auto, up to {AUTO_CEILING}, paced by the "
        "rate the server admits)",
    )
    parser.add_argument(
        "--max-credits",
        type=int,
        metavar="N",
        help="refuse, before any request, a run that would create more than N jobs",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan; send nothing")
    parser.add_argument("--fresh", action="store_true", help="start over, ignoring earlier runs")
    parser.add_argument(
        "--no-offline-fallback",
        action="store_true",
        help="without MIRAGIC_API_KEY, fail instead of running on the built-in emulator "
        "(as MIRAGIC_OFFLINE_FALLBACK=0 does)",
    )
    parser.add_argument(
        "--retry-uncertain",
        action="store_true",
        help="create again items whose create answer was lost (may pay twice)",
    )


def run(args: argparse.Namespace, *, client: Client | None = None) -> int:
    """Run the ``batch`` command; 0 when every item has its image, 1 if any has none, 2 when
    nothing was sent (bad input, over budget, no key), 130 after Ctrl-C (rerun to resume)."""
    try:
        return _run(args, client)
    except KeyboardInterrupt:  # before any job was started, or while the results were written
        print("\nInterrupted.", file=sys.stderr)
        return INTERRUPTED


def _run(args: argparse.Namespace, client: Client | None) -> int:
    try:
        items = read_items(args.file, defaults=_defaults(args))
        concurrency: int | str = _concurrency(args.concurrency)
        if client is None:
            client = _client(args)
        else:
            client.api.require_key()
        batch = Batch(
            client.engine,
            items,
            # The same file into the same folder is the same batch (a rerun resumes it); into
            # another folder it is a new one, whose unseeded prompts make new pictures.
            name=f"{args.file.resolve()} -> {args.out.resolve()}",
            concurrency=concurrency,
            retry_uncertain=args.retry_uncertain,
        )
        plan = batch.plan(fresh=args.fresh)
        if args.dry_run:
            print(plan.summary())
            return 0
        check_budget(plan, args.max_credits)
    except (BadInput, InvalidRequestError, BudgetExceededError, MissingAPIKeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST).is_symlink():
        # Appending would write wherever the link points (also refused at open, O_NOFOLLOW).
        print(f"error: --out: {out / MANIFEST} is a symbolic link; remove it", file=sys.stderr)
        return 2
    writer = Output(out, items)
    try:
        with batch_progress(plan, stream=sys.stderr, widgets=False) as show:
            result = batch.run(
                plan,
                keep_images=False,
                on_item=writer.write,
                on_change=show,
                face=CLI,
                grace=CREATE_GRACE_S,
            )
    except GroupInterrupted as stop:
        # Whatever else happens now, the manifest says what is known, then the process ends.
        with _ignoring_interrupts():
            writer.finish(stop.result)
            for line in stop.lines:
                print(line, file=sys.stderr)
            if CLI.rerun is not None and CLI.rerun not in stop.lines:
                print(CLI.rerun, file=sys.stderr)
        return INTERRUPTED
    writer.finish(result)
    missing = result.missing
    print(
        f"{len(items) - missing}/{len(items)} images in {out} "
        f"(created {result.created}, from the store {result.reused}, resumed {result.resumed}"
        + (f", failed {result.failed}" if result.failed else "")
        + ")"
    )
    for index, end in sorted(result.ends.items()):
        if end.result is None:
            print(f"  item {index}: {_entry_text(end)}", file=sys.stderr)
    return 1 if missing else 0


#: The exit status after Ctrl-C, as a shell reports a process stopped by SIGINT.
INTERRUPTED = 130
#: After Ctrl-C, how long a create already on the wire may take to bring back its job id (so
#: a rerun resumes it instead of calling it uncertain); a second Ctrl-C stops waiting.
CREATE_GRACE_S = 10.0
ENV_HINT = (
    "set the MIRAGIC_API_KEY environment variable (and MIRAGIC_BASE_URL for a server of your own)"
)


def _client(args: argparse.Namespace) -> Client:
    """The key and base URL from the environment; with neither, the built-in emulator (as in
    a notebook), said on stderr, unless ``--no-offline-fallback`` or
    ``MIRAGIC_OFFLINE_FALLBACK=0`` refuses it."""
    from miragic_nb import session

    try:
        resolved = session.resolve_client(offline_fallback=not args.no_offline_fallback)
    except MissingAPIKeyError:
        base_url = os.environ.get("MIRAGIC_BASE_URL")
        why = (
            f"MIRAGIC_BASE_URL is set ({base_url})"
            if base_url
            else "the built-in emulator is refused (--no-offline-fallback or "
            f"{session.ENV_OFFLINE_FALLBACK}=0)"
        )
        raise MissingAPIKeyError(
            f"no Miragic API key and {why}: {ENV_HINT}; nothing was sent", field="api_key"
        ) from None
    if resolved.is_emulator:
        print(
            "no MIRAGIC_API_KEY: running on the built-in emulator (placeholder images, no "
            f"credits); {ENV_HINT} to use Miragic, or --no-offline-fallback to refuse",
            file=sys.stderr,
        )
    return resolved.client


@contextlib.contextmanager
def _ignoring_interrupts() -> Iterator[None]:
    """A further Ctrl-C while the manifest is written would leave it half-done: wait."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _entry_text(end: JobEnd) -> str:
    """How an item without an image ended, in the command line's words."""
    if isinstance(end.error, UncertainJobError):
        return str(end.error)
    return end.text(CLI)


# -- reading the file ---------------------------------------------------------------------------


def read_items(path: Path, *, defaults: dict[str, Any]) -> list[dict[str, Any]]:
    """Every item of ``path`` with ``defaults`` filled in, all checked; refuses the first bad
    line by number."""
    try:
        lines = list(_numbered_items(path))
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror or exc}") from None
    if not lines:
        raise BadInput(f"{path} has no items")
    items = []
    for number, item in lines:
        item = {**defaults, **item}
        try:
            requests_of([item])
        except InvalidRequestError as exc:
            message = exc.message.removeprefix("item 0: ")
            raise BadInput(f"{path.name} line {number}: {message}") from None
        items.append(item)
    return items


def _numbered_items(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    suffix = path.suffix.lower()
    with path.open(encoding="utf-8-sig", newline="") as file:
        if suffix == ".txt":
            for number, line in enumerate(file, 1):
                if line.strip():
                    yield number, {"prompt": line.strip()}
        elif suffix == ".csv":
            yield from _csv_items(path, file)
        elif suffix == ".jsonl":
            for number, line in enumerate(file, 1):
                if line.strip():
                    yield number, _json_item(path, number, line)
        else:
            raise BadInput(f"{path.name}: use a .txt, .csv or .jsonl file")


def _csv_items(path: Path, file: IO[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(file)
    header = [name.strip() for name in reader.fieldnames or []]
    if "prompt" not in header:
        raise BadInput(f"{path.name} line 1: the header has no 'prompt' column")
    unknown = [name for name in header if name not in _COLUMNS]
    if unknown:
        raise BadInput(
            f"{path.name} line 1: unknown column {unknown[0]!r}; the columns are "
            + ", ".join(_COLUMNS)
        )
    reader.fieldnames = header
    for row in reader:
        number = reader.line_num
        item: dict[str, Any] = {}
        for name, value in row.items():
            if name is None or value is None or not value.strip():
                continue
            item[name] = _cell(path, number, name, value.strip())
        yield number, item


def _cell(path: Path, number: int, name: str, text: str) -> object:
    if name in _WHOLE_NUMBERS:
        value = parse_decimal(text)
        if value is None:
            raise BadInput(
                f"{path.name} line {number}: {name} must be a whole number, got {text!r}"
            )
        return value
    if name in FLAGS:
        if text.lower() not in ("true", "false"):
            raise BadInput(f"{path.name} line {number}: {name} must be true or false")
        return text.lower() == "true"
    return text


def _json_item(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path.name} line {number}: not JSON ({exc.msg})") from None
    if not isinstance(item, dict):
        raise BadInput(f"{path.name} line {number}: an item must be a JSON object")
    return item


def _defaults(args: argparse.Namespace) -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    if args.model is not None:
        defaults["model"] = args.model
    if args.size is not None:
        size = _SIZE.fullmatch(args.size.strip())
        if size is None:
            raise BadInput(f"--size must be WIDTHxHEIGHT, e.g. 1024x768, got {args.size!r}")
        defaults["width"], defaults["height"] = int(size[1]), int(size[2])
    if args.seed is not None:
        defaults["seed"] = args.seed
    return defaults


def _concurrency(text: str) -> int | str:
    if text == "auto":
        return text
    value = parse_decimal(text)
    if value is None or value < 1:
        raise BadInput(f"--concurrency must be 'auto' or a positive whole number, got {text!r}")
    return value


# -- writing the results ------------------------------------------------------------------------


def slug(prompt: str, limit: int = 40) -> str:
    """A short file-name-safe form of a prompt: ``"A red fox!"`` → ``"a-red-fox"``."""
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode()
    words = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return words[:limit].rstrip("-") or "image"


class Output:
    """Writes each image as it arrives (then forgets it) and the manifest."""

    def __init__(self, folder: Path, items: list[dict[str, Any]]) -> None:
        self.folder = folder
        self.items = items
        self.width = max(4, len(str(len(items) - 1)))
        self.entries: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def write(self, index: int, end: JobEnd) -> None:
        image, error = end.result, end.error
        request = GenerationRequest(**self.items[index])
        entry: dict[str, Any] = {
            "index": index,
            "prompt": request.prompt,
            "options": {k: v for k, v in request.describe().items() if k != "prompt"},
            "job_id": None,
            "status": "failed",
            "file": None,
            "error": None,
        }
        if image is not None:
            data = bytes(image.original_bytes)
            name = f"{index:0{self.width}d}-{slug(request.prompt)}.{image_extension(data, None)}"
            write_file_atomically(self.folder / name, data)
            entry.update(job_id=image.metadata.get("job_id"), status="completed", file=name)
        else:
            uncertain = isinstance(error, UncertainJobError)
            entry.update(
                job_id=end.job_id or getattr(error, "job_id", None),
                status="uncertain" if uncertain else end.state.words,
                error=_entry_text(end),
            )
        with self._lock:
            self.entries[index] = entry
            with _append_no_follow(self.folder / MANIFEST) as manifest:
                manifest.write(json.dumps(entry) + "\n")

    def finish(self, result: BatchResult | None) -> None:
        """Rewrite the manifest whole, one line per item in order (a rerun's appended lines
        and a killed run's partial ones are replaced)."""
        for index, end in sorted(result.ends.items()) if result is not None else ():
            if index not in self.entries:  # its line was cut short by a Ctrl-C
                self.write(index, end)
        lines = "".join(json.dumps(self.entries[i]) + "\n" for i in sorted(self.entries))
        write_file_atomically(self.folder / MANIFEST, lines.encode())


def _append_no_follow(path: Path) -> IO[str]:
    """``path`` opened for appending; an ``OSError`` if it is a symbolic link."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    return os.fdopen(os.open(path, flags, 0o644), "a", encoding="utf-8")
