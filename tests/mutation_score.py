"""Mutation score of the code behind the guarantees table (a measurement, not a CI step).

``python -m tests.mutation_score`` copies the repository's files into a scratch folder, writes
mutmut's settings there (``setup.cfg``: only the modules below are mutated, only the test
files below run), runs ``mutmut run`` and prints, per module, how many mutants the tests
killed and which survived. It needs ``mutmut`` (3.x) in the running interpreter's
environment: ``pip install mutmut``. See ``docs/mutation.md`` for the figures.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import shutil
import subprocess
import sys
import tempfile
import tokenize
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The modules behind the table's rows on downloads, the key and the create request.
MODULES = (
    "miragic_nb/_core/images.py",
    "miragic_nb/_core/config.py",
    "miragic_nb/_api/transport.py",
    "miragic_nb/_api/miragic.py",
)
#: In each module, the functions that carry a guarantee: only these are mutated (the rest of
#: the module is fenced off with ``# pragma: no mutate start/end`` lines in the scratch copy).
GUARANTEED = {
    "miragic_nb/_core/images.py": {"GeneratedImage.from_bytes", "decode", "_sniff"},
    "miragic_nb/_core/config.py": {
        "HoldsKey.__reduce_ex__",
        "ImmutableKey.__copy__",
        "ImmutableKey.__deepcopy__",
        "Secret.__init__",
        "Secret.reveal",
        "Secret.__repr__",
        "Secret.__eq__",
        "Secret.__hash__",
        "check_api_key",
        "api_key_from_env",
        "base_url_from_env",
        "is_loopback_host",
        "normalize_base_url",
        "origin",
        "as_secret",
    },
    "miragic_nb/_api/transport.py": {
        "BoundedRetry.get_retry_after",
        "BoundedRetry.get_backoff_time",
        "BoundedRetry.is_exhausted",
        "CreateRetry.is_retry",
        "create_retry",
        "HeaderSecret.__repr__",
        "ApiKeyAuth.__init__",
        "ApiKeyAuth.__call__",
        "ApiKeyAuth.__repr__",
        "OriginBoundSession.__init__",
        "OriginBoundSession.get_redirect_target",
        "OriginBoundSession.rebuild_auth",
        "make_session",
        "_OriginGuard.__init__",
        "_OriginGuard.__call__",
        "read_body",
        "request_json",
        "fetch_bytes",
        "_read_download",
        "error_chain",
        "never_connected",
    },
    "miragic_nb/_api/miragic.py": {
        "MiragicAPI.__repr__",
        "MiragicAPI.create",
        "MiragicAPI.download",
        "MiragicAPI._fetch_with_retries",
        "MiragicAPI._fetch",
        "MiragicAPI._send",
        "MiragicAPI.require_key",
    },
}
#: The test files that cover them (no kernels, no browser: a mutant lives in one process).
TESTS = (
    "tests/core/test_images.py",
    "tests/core/test_config.py",
    "tests/api/test_key_checks.py",
    "tests/api/test_secrets.py",
    "tests/api/test_faults.py",
    "tests/api/test_hostile_client.py",
    "tests/api/test_client.py",
    "tests/api/test_guarantee_edges.py",
    "tests/api/test_download_guarantees.py",
)
#: Left out: tests that only start other processes (kernels, notebooks), which a mutant never
#: reaches; and tests that read every frame's locals for the key, which mutmut's trampolines
#: (frames that hold each call's arguments) fail on the unmutated code too.
DESELECT = ("notebook", "kernel", "papermill", "traceback", "in_the_environment")

#: mutmut's verdicts by a mutant's exit code (mutmut/stats.py); anything else is "other"
#: (suspicious, segfault, skipped).
KILLED = frozenset({1, 3})
TIMEOUT = frozenset({36, 24, -24, 152, 255})
SURVIVED = 0
NO_TESTS = frozenset({5, 33})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation_score", description=__doc__)
    parser.add_argument("--module", action="append", help="a module path to mutate (repeatable)")
    parser.add_argument("--tests", action="append", help="a test file to run (repeatable)")
    parser.add_argument("--workdir", type=Path, help="keep the scratch copy here")
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument(
        "--rerun-survivors",
        action="store_true",
        help="in --workdir of an earlier run: copy today's tests there and run again only the "
        "mutants that survived or had no test (a killed mutant stays killed: tests are only added)",
    )
    args = parser.parse_args(argv)
    modules = [m for m in (args.module or MODULES) if (ROOT / m).exists()]
    tests = list(args.tests or TESTS)
    missing = [t for t in tests if not (ROOT / t).is_file()]
    if missing:
        raise SystemExit(f"no such test file: {', '.join(missing)}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="miragic-mutmut-"))
    earlier: dict[str, dict[str, int | None]] = {}
    if args.rerun_survivors:
        earlier = {module: verdicts(workdir, module) for module in modules}
        shutil.rmtree(workdir / "tests")
        shutil.copytree(ROOT / "tests", workdir / "tests")
    else:
        _copy_repository(workdir)
        for module in modules:
            fence_off(workdir / module, GUARANTEED.get(module))
    deselect = " and ".join(f"not {word}" for word in DESELECT)
    (workdir / "setup.cfg").write_text(
        "[mutmut]\n"
        "source_paths = miragic_nb\n"
        f"only_mutate =\n    {_lines(modules)}\n"
        f"pytest_add_cli_args_test_selection =\n    {_lines(tests)}\n"
        f"pytest_add_cli_args =\n    -p\n    no:randomly\n    -q\n    -k\n    {deselect}\n",
        encoding="utf-8",
    )
    print(f"mutating {', '.join(modules)}\nwith {', '.join(tests)}\nin {workdir}", flush=True)
    again = [
        name
        for codes in earlier.values()
        for name, code in codes.items()
        if code == SURVIVED or code is None or code in NO_TESTS
    ]
    if earlier:
        print(f"running again the {len(again)} mutants that survived or had no test", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children), *again],
        cwd=workdir,
        check=False,
    )
    if done.returncode != 0:
        return done.returncode
    print(report(workdir, modules, earlier))
    return 0


def verdicts(workdir: Path, module: str) -> dict[str, int | None]:
    """mutmut's exit code for each mutant of ``module`` in ``workdir`` (None: not run)."""
    meta = workdir / "mutants" / (module + ".meta")
    if not meta.exists():
        return {}
    codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    return codes


def fence_off(path: Path, kept: set[str] | None) -> None:
    """Mark every function of ``path`` but those named in ``kept`` with ``# pragma: no mutate
    block`` after the colon of its ``def`` (a comment: the code runs as it is)."""
    if kept is None:
        return
    source = path.read_text(encoding="utf-8")
    starts: list[int] = []

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                visit(node.body, f"{prefix}{node.name}.")
            elif (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and f"{prefix}{node.name}" not in kept
            ):
                starts.append(node.lineno)

    visit(ast.parse(source).body, "")
    defined = _defined(ast.parse(source).body, "")
    if kept - defined:
        raise SystemExit(
            f"{path.name} defines no {', '.join(sorted(kept - defined))}: update GUARANTEED"
        )
    colons = _header_colons(source)
    lines = source.splitlines(keepends=True)
    for start in starts:
        end = colons[start]
        lines[end - 1] = lines[end - 1].rstrip("\n") + "  # pragma: no mutate block\n"
    path.write_text("".join(lines), encoding="utf-8")


def _defined(body: list[ast.stmt], prefix: str) -> set[str]:
    """Every function and method of ``body``, by qualified name (``Class.method``)."""
    names: set[str] = set()
    for node in body:
        if isinstance(node, ast.ClassDef):
            names |= _defined(node.body, f"{prefix}{node.name}.")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(f"{prefix}{node.name}")
    return names


def _header_colons(source: str) -> dict[int, int]:
    """For each line a ``def`` starts on, the line of the colon that ends its header."""
    found: dict[int, int] = {}
    pending: list[tuple[int, int]] = []  # (def line, bracket depth when it began)
    depth = 0
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.NAME and token.string == "def":
            pending.append((token.start[0], depth))
        elif token.type == tokenize.OP and token.string in "([{":
            depth += 1
        elif token.type == tokenize.OP and token.string in ")]}":
            depth -= 1
        elif token.type == tokenize.OP and token.string == ":" and pending:
            line, at = pending[-1]
            if depth == at:
                found[line] = token.start[0]
                pending.pop()
    return found


def _lines(items: Sequence[str]) -> str:
    return "\n    ".join(items)


def _copy_repository(workdir: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for name in files:
        source = ROOT / name
        if source.is_file():
            target = workdir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def report(
    workdir: Path, modules: Sequence[str], earlier: dict[str, dict[str, int | None]] | None = None
) -> str:
    """Per module: mutants by verdict, the score (killed or timed out, of all), survivors.

    With ``earlier`` verdicts, a mutant killed then counts as killed (it was not run again).
    """
    lines = [
        "| module | mutants | killed | timeout | survived | no test | other | score |",
        "|---|---|---|---|---|---|---|---|",
    ]
    survivors: list[str] = []
    for module in modules:
        codes = verdicts(workdir, module)
        for name, code in (earlier or {}).get(module, {}).items():
            if code in KILLED or code in TIMEOUT:
                codes[name] = code
        killed = sum(1 for c in codes.values() if c in KILLED)
        timeout = sum(1 for c in codes.values() if c in TIMEOUT)
        survived = [name for name, c in codes.items() if c == SURVIVED]
        untested = sum(1 for c in codes.values() if c in NO_TESTS)
        other = len(codes) - killed - timeout - len(survived) - untested
        total = len(codes)
        score = f"{100 * (killed + timeout) / total:.1f}%" if total else "-"
        lines.append(
            f"| `{module}` | {total} | {killed} | {timeout} | {len(survived)} | {untested} "
            f"| {other} | {score} |"
        )
        survivors.extend(survived)
    lines.append("")
    lines.extend(f"survived: {name}" for name in survivors)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
