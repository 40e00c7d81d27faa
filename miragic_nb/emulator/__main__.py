"""``python -m miragic_nb.emulator`` (or ``miragic-emulator``): serve the emulator until Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from .limits import LIMIT_KINDS, RateLimit
from .server import Emulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m miragic_nb.emulator",
        description="Serve a local emulator of the Miragic image API.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8787, help="API port (0: any free port)")
    parser.add_argument(
        "--second-port", type=int, default=0, help="port of the result-file origin (default: any)"
    )
    parser.add_argument("--api-key", default="emulator-key", help="the one accepted X-API-Key")
    parser.add_argument(
        "--job-seconds", type=float, default=2.0, help="how long each job takes (default 2)"
    )
    parser.add_argument(
        "--jitter", type=float, default=0.1, help="relative random spread of durations"
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="omit `progress` from job records"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible runs")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="service workers: jobs beyond this many wait in a queue (default: unlimited)",
    )
    for kind in LIMIT_KINDS:
        parser.add_argument(
            f"--{kind}-rate",
            type=float,
            default=None,
            metavar="PER_SECOND",
            help=f"limit {kind} requests to this many a second, 429 beyond (default: no limit)",
        )
        parser.add_argument(
            f"--{kind}-burst",
            type=int,
            default=None,
            help=f"{kind} requests allowed at once (default: the rate, rounded up)",
        )
    parser.add_argument(
        "--standard-headers",
        action="store_true",
        help="answer a 429 with Retry-After in whole seconds only (no X-RateLimit-Reset-After)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return parser


def _rate_limits(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, RateLimit]:
    """The ``--<kind>-rate``/``--<kind>-burst`` options as limits, or a usage error."""
    limits: dict[str, RateLimit] = {}
    for kind in LIMIT_KINDS:
        rate, burst = getattr(args, f"{kind}_rate"), getattr(args, f"{kind}_burst")
        if rate is None:
            if burst is not None:
                parser.error(f"--{kind}-burst needs --{kind}-rate")
            continue
        # ceil() of inf or nan raises; RateLimit refuses those rates with a clearer message.
        default_burst = max(1, math.ceil(rate)) if 0 < rate < math.inf else 1
        try:
            limits[kind] = RateLimit(rate, burst if burst is not None else default_burst)
        except ValueError as exc:
            parser.error(f"--{kind}-rate/--{kind}-burst: {exc}")
    return limits


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.job_seconds < 0:
        parser.error("--job-seconds must not be negative")
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1 (omit it for unlimited)")
    rate_limits = _rate_limits(args, parser)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(message)s")
    emulator = Emulator(
        api_key=args.api_key,
        job_seconds=args.job_seconds,
        port=args.port,
        host=args.host,
        jitter=args.jitter,
        report_progress=not args.no_progress,
        second_port=args.second_port,
        seed=args.seed,
        rate_limits=rate_limits,
        workers=args.workers,
        standard_headers=args.standard_headers,
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    with emulator:
        print(f"Miragic emulator serving at {emulator.url}", flush=True)
        print(f"API key: {emulator.api_key}", flush=True)
        print(f"Result files also served from {emulator.second_origin.url}", flush=True)
        for kind, limit in rate_limits.items():
            print(f"Rate limit on {kind}: {limit.per_second:g}/s, burst {limit.burst}", flush=True)
        if args.standard_headers:
            print("429 answers carry Retry-After only (whole seconds)", flush=True)
        if args.workers is not None:
            print(f"Service workers: {args.workers}", flush=True)
        print(
            f"Use: MIRAGIC_BASE_URL={emulator.url} MIRAGIC_API_KEY={emulator.api_key}", flush=True
        )
        print("Press Ctrl-C to stop.", flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    print("Emulator stopped.", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
