"""Run the benchmarks, print the table, write ``benchmarks/results/latest.{json,md}``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .common import Row, Settings

RESULTS = Path(__file__).resolve().parent / "results"


def _benchmarks() -> dict[str, Callable[[Settings], list[Row]]]:
    from . import (
        batches,
        display_cost,
        download_decode,
        import_cost,
        many,
        pacing,
        polling_latency,
        store,
        throughput,
    )

    return {
        "polling": polling_latency.run,
        "display": display_cost.run,
        "batch": batches.run,
        "import": import_cost.run,
        "download": download_decode.run,
        "throughput": throughput.run,
        "store": store.run,
        "many": many.run,
        "pacing": pacing.run,
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def _number(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.0f} ms" if abs(value) < 10 else f"{value:.1f} s"
    if unit == "B":
        return f"{value / 1e6:.2f} MB" if value >= 1e5 else f"{value / 1e3:.1f} kB"
    if unit in ("reads", "x"):
        return f"{value:.2f}"
    if unit == "modules":
        return f"{value:.0f}"
    return f"{value:.3g} {unit}"


def table(rows: list[Row]) -> str:
    lines = [
        "| Benchmark | Measure | Baseline | miragic-nb | Ratio | Goal | Met |",
        "|---|---|---:|---:|---:|---:|:-:|",
    ]
    for row in rows:
        goal = row.goal_label
        met = {None: "—", True: "yes", False: "**no**"}[row.met]
        lines.append(
            f"| {row.benchmark} | {row.measure} | {_number(row.baseline, row.unit)} | "
            f"{_number(row.ours, row.unit)} | {row.ratio:.2f}× | {goal} | {met} |"
        )
    baselines = dict.fromkeys(
        f"{r.benchmark}: {r.baseline_label}" for r in rows if r.baseline_label
    )
    notes = [f"- {r.benchmark}, {r.measure}: {r.note}" for r in rows if r.note]
    return "\n".join([*lines, "", "Baselines:", *(f"- {b}" for b in baselines), *notes])


def main(argv: list[str] | None = None) -> int:
    available = _benchmarks()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples, for CI")
    parser.add_argument("--only", nargs="+", choices=sorted(available), help="run only these")
    args = parser.parse_args(argv)
    settings = Settings(quick=args.quick)
    rows: list[Row] = []
    started = time.perf_counter()
    for name, bench in available.items():
        if args.only and name not in args.only:
            continue
        print(f"running {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        rows.extend(bench(settings))
        print(f"  {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    mode = "quick" if args.quick else "full"
    command = "python -m benchmarks" + (" --quick" if args.quick else "")
    header = f"`{command}` ({mode} mode, {time.perf_counter() - started:.0f} s) on {machine()}"
    text = header + "\n\n" + table(rows)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{mode}.md").write_text(text + "\n")
    payload = {"command": command, "machine": machine(), "rows": [r.as_dict() for r in rows]}
    (RESULTS / f"{mode}.json").write_text(json.dumps(payload, indent=2) + "\n")
    return 0
