"""The ``%miragic`` line subcommands: ``%miragic models``, ``history``, ``usage``, ``login``...

Each subcommand has one small argparse parser, which also writes its help: ``%miragic help``
and ``%miragic SUBCOMMAND --help`` print what the parsers generate. A bad argument is a one-line
``UsageError`` saying what was wrong and showing the usage, never a ``SystemExit``.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import shlex
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, NoReturn, cast

from IPython.core.error import StdinNotImplementedError, UsageError
from IPython.display import display

from miragic_nb import session as builtin
from miragic_nb._core import config
from miragic_nb._core.errors import MissingAPIKeyError
from miragic_nb._core.request import IMAGE_INPUT_MODELS, MODELS, parse_decimal
from miragic_nb._core.states import STATUSES
from miragic_nb._magic.arguments import seconds, variable_name
from miragic_nb._views.tables import history_bundle, usage_bundle

if TYPE_CHECKING:
    from miragic_nb._magic.magic import Miragic

__all__ = ["COMMANDS", "LOGIN_ARGUMENT_REFUSED", "SUBCOMMANDS", "parse_since", "run_line"]

LOGIN_ARGUMENT_REFUSED = (
    "%miragic login takes no argument: a key typed on a command line is kept in the shell's "
    "history (and the notebook), so it was not used. Run %miragic login alone to type it "
    "without echo, or set MIRAGIC_API_KEY in the kernel's environment"
)
SINCE_HELP = (
    "only jobs created from DATE on: a UTC date (2026-11-30), a date and time "
    "(2026-11-30T08:00, UTC unless it says +01:00), or a span back from now (24h, 7d, 2w)"
)
_SPAN = re.compile(r"([0-9]+)([hdw])", re.ASCII)
_SPAN_UNITS = {"h": "hours", "d": "days", "w": "weeks"}
_HISTORY_DEFAULT_LIMIT = 10
_display: Callable[..., Any] = display

Handler = Callable[["Miragic", argparse.Namespace], Any]


class _HelpShown(Exception):
    """``--help`` printed the help: the subcommand has nothing more to do."""


class SubcommandParser(argparse.ArgumentParser):
    """The parser of one ``%miragic`` subcommand: errors are one-line ``UsageError`` and the
    usage lists positionals first, as people write them (``%miragic history [N] [--model M]``).
    """

    def __init__(self, name: str, description: str, *, refusal: str | None = None) -> None:
        super().__init__(
            prog=f"%miragic {name}", description=description, add_help=False, allow_abbrev=False
        )
        #: Said instead of any parsing error, which could echo what was typed (a key, for login).
        self.refusal = refusal
        self.add_argument("-h", "--help", action="help", help=argparse.SUPPRESS)

    def usage_line(self) -> str:
        """The usage on one line, from the arguments (``--help`` left out)."""
        positionals = [a for a in self._actions if not a.option_strings]
        optionals = [a for a in self._actions if a.option_strings]
        parts = [self.prog]
        for actions in (positionals, optionals):
            formatter = argparse.HelpFormatter(prog="")
            formatter.add_usage(None, actions, [], prefix="")
            parts.append(formatter.format_help())
        return " ".join(" ".join(parts).split())

    def finish(self) -> None:
        """Call once every argument is added: ``--help`` then shows ``usage_line``."""
        self.usage = self.usage_line().replace("%", "%%")  # argparse %-formats its usage

    def parse(self, words: Sequence[str]) -> argparse.Namespace | None:
        """The arguments, or None when ``--help`` was shown instead."""
        try:
            args, extra = self.parse_known_args(list(words))
        except _HelpShown:
            return None
        if extra:
            self.error(f"unexpected {' '.join(extra)}")
        return args

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.refusal or f"{self.prog}: {message}; usage: {self.usage_line()}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        # Only the help action exits (errors go to ``error``): a magic must never end the kernel.
        raise _HelpShown


@dataclass(frozen=True)
class Subcommand:
    """One ``%miragic`` subcommand: its parser and what it does with the parsed arguments."""

    parser: SubcommandParser
    run: Handler


@dataclass(frozen=True)
class _Argument:
    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


def _arg(*flags: str, **options: Any) -> _Argument:
    return _Argument(flags, options)


#: The subcommands, in the order ``%miragic help`` lists them.
COMMANDS: dict[str, Subcommand] = {}


def _subcommand(
    name: str, description: str, *arguments: _Argument, refusal: str | None = None
) -> Callable[[Handler], Handler]:
    def register(run: Handler) -> Handler:
        parser = SubcommandParser(name, description, refusal=refusal)
        for argument in arguments:
            parser.add_argument(*argument.flags, **argument.options)
        parser.finish()
        COMMANDS[name] = Subcommand(parser, run)
        return run

    return register


def run_line(magic: Miragic, line: str) -> Any:
    """Run ``%miragic <line>``."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        if line.split()[0].lower() == "login":  # a key with a quote in it
            raise UsageError(LOGIN_ARGUMENT_REFUSED) from None
        raise UsageError(f"%miragic: {exc}") from None
    if not words or words[0] in ("-h", "--help"):
        words = ["help"]
    command = COMMANDS.get(words[0].lower())
    if command is None:
        hint = " (prompts go in a %%miragic cell)" if len(words) > 1 or "-" in line else ""
        raise UsageError(
            f"%miragic: unknown subcommand {words[0]!r}; use one of {', '.join(COMMANDS)}{hint}"
        )
    args = command.parser.parse(words[1:])
    return None if args is None else command.run(magic, args)


# -- argument values ---------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = parse_decimal(text)
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _model(text: str) -> str:
    model = text.strip().lower()
    if model not in MODELS:
        raise argparse.ArgumentTypeError(f"unknown model {text!r}; choose from {', '.join(MODELS)}")
    return model


def _status(text: str) -> str:
    status = text.strip().upper()
    if status not in STATUSES:
        raise argparse.ArgumentTypeError(
            f"unknown status {text!r}; choose from {', '.join(STATUSES)}"
        )
    return status


def parse_since(text: str) -> datetime:
    """A ``--since`` value: an ISO date or date and time (UTC unless it gives an offset), or
    a span back from now: ``24h``, ``7d``, ``2w``."""
    text = text.strip()
    try:
        span = _SPAN.fullmatch(text.lower())
        if span:
            back = timedelta(**{_SPAN_UNITS[span.group(2)]: int(span.group(1))})
            return datetime.now(timezone.utc) - back
        if text.isascii():  # fromisoformat would take other scripts' digits on some versions
            moment = datetime.fromisoformat(text)
            return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    except (ValueError, OverflowError):
        pass
    raise argparse.ArgumentTypeError(
        "must be a date like 2026-11-30, a date and time like 2026-11-30T08:00, "
        f"or a span back from now like 24h, 7d or 2w; got {text!r}"
    )


# -- the subcommands ---------------------------------------------------------------------------


@_subcommand("models", "the models, which take an input image, and the default")
def _models(magic: Miragic, args: argparse.Namespace) -> None:
    width = max(len(name) for name in MODELS)
    for name, description in MODELS.items():
        extra = "  [accepts --image-url]" if name in IMAGE_INPUT_MODELS else ""
        default = "  (default)" if name == magic.model else ""
        print(f"{name:<{width}}  {description}{extra}{default}")


@_subcommand("config", "every setting, its value and where it comes from (never the key itself)")
def _config(magic: Miragic, args: argparse.Namespace) -> None:
    configured = magic.config.get("Miragic", {})
    rows = []
    for name in sorted(magic.class_trait_names(config=True)):
        source = "%config / ipython_config" if name in configured else "default"
        rows.append((f"Miragic.{name}", repr(getattr(magic, name)), source))
    key_from = builtin.key_source()
    rows.append(("API key", "set" if key_from else "not set", key_from or "-"))
    if magic.base_url:
        rows.append(("base URL", magic.base_url, "Miragic.base_url"))
    elif os.environ.get(config.ENV_BASE_URL):
        rows.append(("base URL", os.environ[config.ENV_BASE_URL], config.ENV_BASE_URL))
    else:
        rows.append(("base URL", config.DEFAULT_BASE_URL, "default"))
    fallback = builtin.fallback_enabled(magic.offline_fallback)
    fallback_from = (
        "Miragic.offline_fallback"
        if not magic.offline_fallback
        else builtin.ENV_OFFLINE_FALLBACK
        if not fallback
        else "default"
    )
    rows.append(("offline fallback", "on" if fallback else "off", fallback_from))
    emulator = builtin.builtin_emulator_running()
    rows.append(("built-in emulator", emulator.url if emulator else "not running", "-"))
    rows.append(("history", str(magic._history().home), "Miragic.home / MIRAGIC_HOME / default"))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for name, value, source in rows:
        print(f"{name:<{widths[0]}}  {value:<{widths[1]}}  ({source})")


@_subcommand(
    "login",
    "type the API key without echo; it is kept for this session only, never saved",
    refusal=LOGIN_ARGUMENT_REFUSED,
)
def _login(magic: Miragic, args: argparse.Namespace) -> None:
    try:
        key = getpass.getpass("Miragic API key (kept for this session only): ")
    except (StdinNotImplementedError, EOFError):
        # papermill, nbclient, Voilà: no one can type a key; fail now instead of waiting.
        # Not a UsageError: runners report only an error's name and value, not stderr.
        raise MissingAPIKeyError(
            "%miragic login: this frontend cannot ask for input; set MIRAGIC_API_KEY "
            "in the kernel's environment instead",
            field="api_key",
        ) from None
    if not key.strip():
        raise UsageError("%miragic login: no key entered; nothing changed")
    builtin.set_session_key(key)
    print("Key set for this session (not saved anywhere).")


@_subcommand("logout", "forget the key typed with %miragic login")
def _logout(magic: Miragic, args: argparse.Namespace) -> None:
    builtin.clear_session_key()
    print("Session key forgotten.")


@_subcommand(
    "resume",
    "wait again for a job already created (after a timeout or an interrupt); no new credit",
    _arg("job_id", metavar="JOB_ID", help="the id the interrupt or timeout message showed"),
    _arg("-o", "--out", type=variable_name, metavar="NAME", help="also store the result in NAME"),
    _arg("--timeout", type=seconds, metavar="S", help="seconds to wait before giving up"),
)
def _resume(magic: Miragic, args: argparse.Namespace) -> Any:
    return magic.resume(args.job_id, out=args.out, timeout=args.timeout)


@_subcommand("panel", "the point-and-click panel, with this shell's %config Miragic settings")
def _panel(magic: Miragic, args: argparse.Namespace) -> Any:
    """The panel, as the line's value: shown by the displayhook and kept in ``_``."""
    try:
        from miragic_nb._panel.panel import Panel
    except ImportError:
        raise UsageError("%miragic panel: the panel is not available in this version") from None
    return Panel(settings=magic.settings())


@_subcommand(
    "emulator",
    "the built-in offline emulator: placeholder images, no key, no credits",
    _arg(
        "action",
        nargs="?",
        default="status",
        type=str.lower,
        choices=("start", "stop", "status"),
        metavar="start|stop|status",
        help="status (the default) says whether it runs and where",
    ),
)
def _emulator(magic: Miragic, args: argparse.Namespace) -> None:
    if args.action == "start":
        emulator = builtin.start_builtin_emulator()
        print(
            f"Built-in emulator running at {emulator.url}; cells use it until "
            "`%miragic emulator stop` (placeholder images, no credits)."
        )
    elif args.action == "stop":
        stopped = builtin.stop_builtin_emulator()
        print("Built-in emulator stopped." if stopped else "The built-in emulator was not running.")
    else:
        running = builtin.builtin_emulator_running()
        print(
            f"Built-in emulator running at {running.url}"
            if running
            else "Built-in emulator not running."
        )


@_subcommand(
    "history",
    "the recorded jobs, newest first, with thumbnails in a notebook; the filters combine",
    _arg(
        "limit",
        nargs="?",
        type=_positive,
        metavar="N",
        help=f"how many jobs to show (default {_HISTORY_DEFAULT_LIMIT})",
    ),
    _arg("--search", metavar="TEXT", help="only prompts containing TEXT, any case (quote spaces)"),
    _arg("--model", type=_model, metavar="M", help=f"only jobs of model M: {', '.join(MODELS)}"),
    _arg(
        "--status", type=_status, metavar="S", help=f"only jobs in status S: {', '.join(STATUSES)}"
    ),
    _arg("--since", type=parse_since, metavar="DATE", help=SINCE_HELP),
    _arg(
        "--notebook",
        metavar="PATH",
        help="instead: each image a saved notebook shows, and whether the history has its job",
    ),
)
def _history(magic: Miragic, args: argparse.Namespace) -> None:
    filters = {"search": args.search, "model": args.model, "status": args.status}
    filters_given = any(filters.values()) or args.since is not None
    if args.notebook is not None:
        if filters_given or args.limit is not None:
            COMMANDS["history"].parser.error("--notebook takes no N and no filter")
        from miragic_nb._core.provenance import report

        try:
            print("\n".join(report(os.path.expanduser(args.notebook), magic._history())))
        except (OSError, ValueError) as exc:
            raise UsageError(f"%miragic history --notebook: {exc}") from None
        return
    limit = _HISTORY_DEFAULT_LIMIT if args.limit is None else args.limit
    records = magic._history().records(limit, since=args.since, **filters)
    if not records:
        print("No jobs match these filters." if filters_given else "No jobs recorded yet.")
        return
    _display(history_bundle(records), raw=True)


@_subcommand(
    "usage",
    "credits spent (the server's count), jobs, failures and reuses of saved results (each "
    "saved a credit), per model or per UTC day",
    _arg("--since", type=parse_since, metavar="DATE", help=SINCE_HELP),
    _arg(
        "--by",
        type=str.lower,
        choices=("model", "day"),
        default="model",
        metavar="model|day",
        help="one row per model (the default) or per UTC day",
    ),
)
def _usage(magic: Miragic, args: argparse.Namespace) -> None:
    since: datetime | None = args.since
    rows = magic._history().usage(since, by=args.by)
    period = "" if since is None else f" since {since.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC"
    if not rows:
        print(f"No jobs recorded{period or ' yet'}.")
        return
    _display(
        usage_bundle(rows, by=args.by, title=f"Usage{period or ', all recorded jobs'}"), raw=True
    )


@_subcommand("help", "this overview; %miragic SUBCOMMAND --help shows one subcommand's options")
def _help(magic: Miragic, args: argparse.Namespace) -> None:
    print(overview(magic))


def overview(magic: Miragic) -> str:
    """``%miragic help``: the cell's options and every subcommand, from their parsers."""
    cell_parser = cast(Any, type(magic).miragic).parser  # built by IPython's @magic_arguments
    options = cell_parser.formatter_class(prog="%%miragic")
    options.start_section(None)  # indents the options under the line above
    options.add_arguments(cell_parser._actions)
    options.end_section()
    lines = [
        "%%miragic [options]  generate images from the prompt in the cell body; "
        "{name} takes a variable's value",
        options.format_help().rstrip(),
        "",
    ]
    for command in COMMANDS.values():
        description = command.parser.description or ""
        lines += [
            command.parser.usage_line(),
            textwrap.fill(description, 88, initial_indent="    ", subsequent_indent="    "),
        ]
    lines += [
        "",
        "Defaults: %config Miragic (e.g. %config Miragic.model = 'turbo'). "
        "Full cell help: %%miragic?",
    ]
    return "\n".join(lines)


#: The subcommand names, in the order ``%miragic help`` lists them.
SUBCOMMANDS = tuple(COMMANDS)
