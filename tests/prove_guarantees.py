"""The guarantees table proves itself: each row's tests pass, and fail once its guarantee breaks.

``python -m tests.prove_guarantees`` reads the guarantees table (``docs/reliability.md``, the
``| guarantee | proved by |`` table), resolves every backticked test name in each row's "proved
by" cell to the test ids ``pytest --collect-only`` reports, then:

1. runs every cited test once, without any break: each must pass;
2. for each row, runs that row's tests again in a fresh pytest process with the row's break
   applied (``MIRAGIC_BREAK=<row key>``, see ``tests/guarantee_breaks.py``): at least one of
   them must fail in its own assertions (a setup error does not count).

It exits non-zero, naming the row, when a name does not resolve, a cited test fails without
a break, a row has no break, or a break leaves its row's tests green. A row's key is the slug
of its bold lead words ("**One job per generation.**" -> ``one-job-per-generation``).

Names in a cell: ``file.py`` (every test in it), ``file.py::name``, ``name`` (in the row's
last named file, else the one test function of that name in the suite), ``name[params]``
(``*`` globs), ``[params]`` (the last named function), and ``first`` … ``last`` (every
parametrisation of one function between the two, in collection order). Backticked text in
parentheses is commentary, not a name.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE_HEADER = "| guarantee | proved by |"
#: Flags of every pytest run here: stop at the first failure, fixed order, quiet.
PYTEST_FLAGS = ("-q", "-p", "no:randomly", "-p", "no:cacheprovider", "-o", "addopts=")
#: A break run stops at its first failure; a test that hangs under a break fails by
#: pytest-timeout's hand.
BREAK_FLAGS = ("-x", "-o", "timeout=120")


@dataclass
class Row:
    key: str
    guarantee: str
    citations: list[str]
    test_ids: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def read_rows(table_file: Path) -> list[Row]:
    """The rows of the guarantees table in ``table_file``, with their cited names."""
    lines = table_file.read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if line.replace(" ", "").startswith("|guarantee|")]
    if not starts:
        raise SystemExit(f"{table_file}: no table headed {TABLE_HEADER!r}")
    start = starts[0]
    rows: list[Row] = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        guarantee, proved_by = _cells(line)
        bold = re.match(r"\*\*(.+?)\*\*", guarantee)
        lead = bold.group(1) if bold else guarantee[:60]
        rows.append(Row(slug(lead), guarantee, citations(proved_by)))
    return rows


def _cells(line: str) -> tuple[str, str]:
    # Split on pipes outside backticks (a cell may hold `a\|b`).
    cells, current, in_code = [], "", False
    for char in line.strip().strip("|"):
        if char == "`":
            in_code = not in_code
        if char == "|" and not in_code and not current.endswith("\\"):
            cells.append(current.strip())
            current = ""
        else:
            current += char
    cells.append(current.strip())
    return cells[0], cells[-1]


def citations(cell: str) -> list[str]:
    """The backticked names in a "proved by" cell, outside parentheses; "…" marks a range."""
    depth, kept = 0, ""
    in_code = False
    for char in cell:
        if char == "`":
            in_code = not in_code
        if not in_code and char == "(":
            depth += 1
        elif not in_code and char == ")":
            depth = max(0, depth - 1)
        elif depth == 0:
            kept += char
    names: list[str] = []
    for match in re.finditer(r"`([^`]+)`|(…)", kept):
        names.append(match.group(1) or "…")
    return names


def collect(paths: Sequence[str]) -> list[str]:
    """Every test id pytest collects under ``paths``, in collection order."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", *PYTEST_FLAGS, *paths],
        cwd=ROOT,
        env={name: value for name, value in os.environ.items() if name != "MIRAGIC_BREAK"},
        capture_output=True,
        text=True,
        check=False,
    )
    ids = [line for line in done.stdout.splitlines() if re.match(r"\S+\.py::", line)]
    if done.returncode != 0 or not ids:
        raise SystemExit(f"pytest --collect-only failed:\n{done.stdout[-3000:]}{done.stderr}")
    return ids


def resolve(row: Row, collected: Sequence[str]) -> None:
    """Fill ``row.test_ids`` from its citations; what does not resolve goes to ``problems``."""
    by_file: dict[str, list[str]] = {}
    for test_id in collected:
        by_file.setdefault(test_id.split("::", 1)[0].rsplit("/", 1)[-1], []).append(test_id)
    current_file: str | None = None
    current_function: str | None = None
    range_from: str | None = None
    found: list[str] = []
    for name in row.citations:
        if name == "…":
            range_from = found[-1] if found else None
            continue
        file_part, _, rest = name.rpartition("::") if "::" in name else ("", "", name)
        if not file_part and rest.endswith(".py"):
            file_part, rest = rest, ""
        if file_part:
            current_file, current_function = file_part, None
        if rest.startswith("["):
            if current_function is None:
                row.problems.append(f"`{name}`: no test function named before it")
                continue
            rest = current_function + rest
        function = rest.split("[", 1)[0]
        pool = by_file.get(current_file or "", []) if current_file else list(collected)
        if file_part and not pool:
            row.problems.append(f"`{name}`: pytest collects no tests from {file_part}")
            continue
        matches = [t for t in pool if _matches(t, rest)] if rest else list(pool)
        if not matches and current_file and not file_part and "[" not in rest:
            # A bare name may name a test in another file than the row's last one.
            matches = [t for t in collected if _matches(t, rest)]
        files = {t.split("::", 1)[0] for t in matches}
        if not matches:
            row.problems.append(f"`{name}`: pytest collects no such test")
            continue
        if len(files) > 1:
            row.problems.append(f"`{name}`: ambiguous, in {', '.join(sorted(files))}")
            continue
        if rest:
            current_function = function
        if not file_part:
            current_file = next(iter(files)).rsplit("/", 1)[-1]
        if range_from is not None:
            # `first` … `last`: everything between the two, in collection order.
            start, end = collected.index(range_from), collected.index(matches[-1])
            matches = [
                t for t in collected[start : end + 1] if t.split("[")[0] == range_from.split("[")[0]
            ]
            range_from = None
        found.extend(t for t in matches if t not in found)
    row.test_ids = found


def _matches(test_id: str, name: str) -> bool:
    tail = test_id.split("::", 1)[1]
    if "[" in name:
        pattern = ".*".join(re.escape(part) for part in name.split("*"))
        return re.fullmatch(pattern, tail) is not None
    return tail == name or tail.startswith(name + "[")


# -- running -------------------------------------------------------------------------------


@dataclass
class Outcome:
    returncode: int
    passed: list[str]
    failed: list[str]  # failed in the test's own call
    errors: list[str]  # failed in setup or teardown
    seconds: float
    output: str


def run_pytest(
    test_ids: Sequence[str], *, extra: Sequence[str] = (), broken: str | None = None
) -> Outcome:
    """One pytest process over ``test_ids``, with the break ``broken`` applied (or none)."""
    env = {name: value for name, value in os.environ.items() if name != "MIRAGIC_BREAK"}
    if broken is not None:
        env["MIRAGIC_BREAK"] = broken
    with tempfile.TemporaryDirectory(prefix="prove-guarantees-") as folder:
        report = Path(folder) / "report.xml"
        started = time.monotonic()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                *PYTEST_FLAGS,
                *extra,
                f"--junitxml={report}",
                *test_ids,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        seconds = time.monotonic() - started
        passed, failed, errors = [], [], []
        if report.exists():
            for case in ElementTree.parse(report).iter("testcase"):
                name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
                if case.find("failure") is not None:
                    failed.append(name)
                elif case.find("error") is not None:
                    errors.append(name)
                elif case.find("skipped") is None:
                    passed.append(name)
    return Outcome(done.returncode, passed, failed, errors, seconds, done.stdout + done.stderr)


def judge(row: Row, brk: Callable[..., None], run: Outcome) -> None:
    """Print how the run of ``row``'s tests under ``brk`` went; note a break that proved nothing."""
    what = f"{row.key}/{brk.__name__}"
    if run.failed:
        print(f"  red      {what}: {run.failed[0]} ({run.seconds:.0f}s)", flush=True)
    elif run.returncode in (0, 1) and not run.errors:
        print(f"  GREEN    {what} ({run.seconds:.0f}s)", flush=True)
        row.problems.append(f"its break {brk.__name__} ({brk.__doc__}) leaves its tests green")
    else:
        print(f"  ERROR    {what} ({run.seconds:.0f}s)", flush=True)
        row.problems.append(
            f"the run under {brk.__name__} ended without a failing test "
            f"(exit {run.returncode}, errors in {run.errors[:2]}):\n{run.output[-1500:]}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.prove_guarantees", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--table", type=Path, default=ROOT / "docs" / "reliability.md")
    parser.add_argument("--row", action="append", default=[], help="only this row key (repeatable)")
    parser.add_argument(
        "--list", action="store_true", help="list the rows and their test ids; run nothing"
    )
    parser.add_argument(
        "--skip-clean", action="store_true", help="only the break runs (the suite just passed)"
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="break runs at once, each its own pytest process"
    )
    args = parser.parse_args(argv)

    from tests.guarantee_breaks import BREAKS, EXEMPT, env_value

    rows = read_rows(args.table)
    if args.row:
        unknown = set(args.row) - {row.key for row in rows}
        if unknown:
            raise SystemExit(f"no such row: {', '.join(sorted(unknown))}")
        rows = [row for row in rows if row.key in args.row]
    collected = collect(["tests"])
    for row in rows:
        resolve(row, collected)
        if not row.citations:
            row.problems.append("cites no test")
        if not BREAKS.get(row.key) and row.key not in EXEMPT:
            row.problems.append("has no break in tests/guarantee_breaks.py")
    stale = set(BREAKS) - {row.key for row in rows}
    if stale and not args.row:
        print(f"breaks for rows the table no longer has: {', '.join(sorted(stale))}")
    if args.list:
        for row in rows:
            print(f"{row.key}: {len(row.test_ids)} tests; {'; '.join(row.problems) or 'ok'}")
            for test_id in row.test_ids:
                print(f"    {test_id}")
        return 0

    print(f"{len(rows)} rows from {args.table}", flush=True)
    if not args.skip_clean:
        cited = list(
            dict.fromkeys(t for row in rows if row.key not in EXEMPT for t in row.test_ids)
        )
        clean = run_pytest(cited)
        print(
            f"without a break: {len(clean.passed)} of {len(cited)} cited tests passed "
            f"({clean.seconds:.0f}s)",
            flush=True,
        )
        bad = set(clean.failed) | set(clean.errors) | (set(cited) - set(clean.passed))
        for row in rows:
            for test_id in row.test_ids:
                if test_id in bad:
                    row.problems.append(f"{test_id} does not pass without a break")
        if clean.returncode not in (0, 1):
            print(clean.output[-3000:])
    for row in rows:
        if row.key in EXEMPT:
            print(f"  exempt   {row.key}: {EXEMPT[row.key]}")
    runs = [
        (row, brk)
        for row in rows
        if row.key not in EXEMPT and row.test_ids
        for brk in BREAKS.get(row.key, ())
    ]
    # Each break runs in its own pytest process; --jobs of them at once.
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {
            pool.submit(
                run_pytest, row.test_ids, extra=BREAK_FLAGS, broken=env_value(row.key, brk)
            ): (row, brk)
            for row, brk in runs
        }
        for future in as_completed(futures):
            row, brk = futures[future]
            judge(row, brk, future.result())
    unproven = [row for row in rows if row.problems]
    for row in unproven:
        print(f"NOT PROVEN: {row.key}")
        for problem in row.problems:
            print(f"    {problem}")
    proved = len(rows) - len(unproven)
    print(f"{proved} of {len(rows)} rows proved by tests that fail when their guarantee breaks")
    return 1 if unproven else 0


if __name__ == "__main__":
    sys.exit(main())
