"""``python -m miragic_nb demo|app|batch``: the bundled notebooks headless, the panel as a
page, or a batch of images from a file.

Usage::

    python -m miragic_nb demo [--output DIR] [--notebook NAME] [--timeout SECONDS]
    python -m miragic_nb app [--port N] [--host HOST] [--save-dir DIR]
    python -m miragic_nb batch FILE --out DIR [--model M] [--size WxH] [--seed N]
        [--concurrency N|auto] [--max-credits N] [--dry-run] [--fresh]

``demo``: with no ``MIRAGIC_API_KEY`` the notebook runs on the built-in emulator (no network,
no credits); with a key it calls the real API. The executed ``.ipynb`` and an ``.html``
rendering are written to ``DIR`` (default ``./miragic-demo``) and their paths printed.

``app``: serves the panel alone as a web page with Voilà (the ``app`` extra), on 127.0.0.1
with a token; see ``miragic_nb/app.py``.

``batch``: an image per line of a .txt, .csv or .jsonl file, resumable; see ``cli_batch.py``
and ``docs/batches.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from miragic_nb._cli import app, demo
from miragic_nb._cli import batch as cli_batch


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m miragic_nb",
        description="miragic-nb command line: run the bundled notebooks headless, or a batch.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "demo",
        help="execute a bundled notebook in a real kernel; write the .ipynb and .html",
        description=(
            "Execute a bundled notebook (default: quickstart) in a python3 kernel and write the "
            "executed notebook and an HTML rendering. Without MIRAGIC_API_KEY it runs on the "
            "built-in emulator."
        ),
    )
    run.add_argument(
        "--output",
        "-o",
        type=Path,
        default=demo.DEFAULT_OUTPUT_DIR,
        metavar="DIR",
        help="where to write the results (default: ./miragic-demo)",
    )
    run.add_argument(
        "--notebook",
        "-n",
        default=demo.DEFAULT_NOTEBOOK,
        metavar="NAME",
        help="which bundled notebook to run (default: quickstart; --list shows them all)",
    )
    run.add_argument(
        "--timeout",
        type=float,
        default=demo.DEFAULT_CELL_TIMEOUT_S,
        metavar="SECONDS",
        help=f"longest a single cell may run (default: {demo.DEFAULT_CELL_TIMEOUT_S:g})",
    )
    run.add_argument("--list", action="store_true", help="list the bundled notebooks and exit")
    serve = commands.add_parser(
        "app",
        help="serve the panel alone as a web page (Voilà), on 127.0.0.1 with a token",
        description=(
            "Serve the image-generation panel as a web page with Voilà. Whoever reaches the "
            "page spends the key's credits (MIRAGIC_API_KEY), so it listens on 127.0.0.1 and "
            "needs the printed token. Without a key it uses the built-in emulator."
        ),
    )
    serve.add_argument(
        "--port", type=int, default=app.DEFAULT_PORT, help="port (default: %(default)s)"
    )
    serve.add_argument(
        "--host",
        default=app.DEFAULT_HOST,
        help="address to listen on (default: %(default)s; others expose the page to the network)",
    )
    serve.add_argument(
        "--save-dir",
        type=Path,
        default=Path(),
        metavar="DIR",
        help="where the Save button writes images (default: the current directory)",
    )
    cli_batch.add_parser(commands)
    return parser


def _print_progress(number: int, total: int, first_line: str) -> None:
    shown = first_line if len(first_line) <= 60 else first_line[:59] + "…"
    print(f"  [{number}/{total}] {shown}", file=sys.stderr, flush=True)


def _demo(args: argparse.Namespace) -> int:
    if args.list:
        for name in demo.available_notebooks():
            print(name)
        return 0
    if args.timeout <= 0:
        print("error: --timeout must be a positive number of seconds", file=sys.stderr)
        return 2
    try:
        source = demo.find_notebook(args.notebook)
        print(
            f"Running {source.name} on {demo.describe_target(os.environ)} ...",
            file=sys.stderr,
            flush=True,
        )
        result = demo.run_notebook(
            source, args.output, cell_timeout=args.timeout, on_cell=_print_progress
        )
    except (demo.DemoError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Done: {result.images} images.")
    print(f"  notebook: {result.notebook}")
    print(f"  html:     {result.html}")
    relative = os.path.relpath(result.notebook)  # jupyter lab serves the current directory
    notebook = result.notebook if relative.startswith("..") else relative
    print(f"Open the .html in a browser, or the notebook with: jupyter lab {notebook}")
    return 0


def _app(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        print("error: --port must be from 1 to 65535", file=sys.stderr)
        return 2
    save_dir = args.save_dir.expanduser().resolve()
    if not save_dir.is_dir():
        print(f"error: --save-dir {save_dir} is not a folder", file=sys.stderr)
        return 2
    settings = app.AppSettings(args.host, args.port, save_dir, app.new_token())
    try:
        app.serve(settings, say=lambda line: print(line, flush=True))
    except ImportError as exc:
        print(
            f"error: the app needs Voilà ({exc}); install it with: pip install 'miragic-nb[app]'",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    if args.command == "batch":
        return cli_batch.run(args)
    if args.command == "app":
        return _app(args)
    return 2  # argparse rejects unknown commands before this


if __name__ == "__main__":
    sys.exit(main())
