"""The documents a user reads agree with each other and stay inside the repository."""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


GUARANTEES_HEADER = "| guarantee | proved by |"
#: Headers of tables that pair a promise with the tests proving it (checked like the guarantees).
PROOF_HEADERS = {GUARANTEES_HEADER, "| promise | tests |"}

#: A cited test: ``[dir/]file.py``, ``[file.py::]test_name[param-glob]`` or ``[param-glob]`` (a
#: further case of the test cited just before it).
CITATION = re.compile(
    r"(?:(?P<file>[\w/.-]*test_\w*\.py)(?:::)?)?"
    r"(?P<test>test_\w+)?"
    r"(?:\[(?P<param>[^\]]+)\])?"
)


def guarantees_tables() -> dict[str, list[str]]:
    """The rows of every table of promises and their proofs (``PROOF_HEADERS``) in the README
    and ``docs/``."""
    tables: dict[str, list[str]] = {}
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        lines = path.read_text(encoding="utf-8").splitlines()
        rows = []
        for start, line in enumerate(lines):
            if line.strip() not in PROOF_HEADERS:
                continue
            for row in lines[start + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append(row)
        if rows:
            tables[str(path.relative_to(ROOT))] = rows
    return tables


def guarantees_table(markdown: str) -> list[str]:
    """The rows of the first table whose header is ``| guarantee | proved by |``."""
    lines = markdown.splitlines()
    start = lines.index(GUARANTEES_HEADER)
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def cited_tests(proof: str) -> tuple[list[str], list[str]]:
    """The backticked citations of a ``proved by`` cell, and the backticked words outside a
    parenthesised note that are not citations (each one a defect of the row)."""
    citations, strays, depth = [], [], 0
    for part, code in re.findall(r"([^`]*)(?:`([^`]*)`)?", proof):
        depth += part.count("(") - part.count(")")
        if not code:
            continue
        if CITATION.fullmatch(code) and code.strip("[]"):
            citations.append(code)
        elif depth <= 0:
            strays.append(code)
    return citations, strays


def collected_test_ids() -> list[str]:
    """Every test id ``pytest --collect-only`` reports (in a subprocess: the suite's own
    collection, with the repository's layout, whatever folders the tests live in)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-o",
            "addopts=",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            "tests",
        ],
        cwd=ROOT,
        # Only the collection: no options from the environment (-n, a seed) reach it.
        env={k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    # Parameter ids may hold spaces: an id is any line whose part before "::" is a file.
    ids = [line for line in result.stdout.splitlines() if line.split("::")[0].endswith(".py")]
    output = result.stdout[-2000:] + result.stderr[-2000:]
    assert result.returncode == 0, output
    assert ids, output
    return ids


def unresolved(citations: list[str], ids: list[str]) -> list[str]:
    """The citations of one cell that name no collected test. A bare name takes the file of
    the citation before it in the same cell, if any; a ``[param]`` alone, its test."""
    # id -> (file basename, test function name, parameter id or "")
    parsed = []
    for test_id in ids:
        path, _, rest = test_id.partition("::")
        name = rest.rsplit("::", 1)[-1]
        function, _, param = name.partition("[")
        parsed.append((Path(path).name, function, param[:-1] if param else ""))
    missing, file, test = [], None, None
    for citation in citations:
        match = CITATION.fullmatch(citation)
        assert match is not None
        if match["file"]:
            file, test = Path(match["file"]).name, None
        if match["test"]:
            test = match["test"]
        param = match["param"]
        if param is not None and test is None:
            missing.append(f"{citation} (a case of which test?)")
            continue
        found = any(
            (file is None or base == file)
            and (test is None or function == test)
            and (param is None or fnmatch.fnmatchcase(case, param))
            for base, function, case in parsed
        )
        if not found:
            missing.append(citation)
    return missing


def test_the_readme_sends_the_reader_to_the_guarantees() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](docs/reliability.md)" in readme, "link docs/reliability.md from README.md"
    reliability = guarantees_table((ROOT / "docs" / "reliability.md").read_text(encoding="utf-8"))
    assert len(reliability) > 10


def test_the_readme_is_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, "move details to a page in docs/ and link it"
    assert "%load_ext miragic_nb" in lines[:60]
    # The commands a newcomer types first, exactly as the quick start gives them.
    assert 'python -m pip install -e ".[demo]" && python -m miragic_nb demo' in lines
    assert "bash scripts/test.sh" in lines
    # What moved out is linked, not copied.
    text = "\n".join(lines)
    for page in ("docs/reliability.md", "docs/performance.md", "docs/magic-commands.md"):
        assert f"]({page})" in text
    assert "](CONTRIBUTING.md)" in text
    assert "| guarantee | proved by |" not in text


@pytest.fixture(scope="module")
def test_ids() -> list[str]:
    return collected_test_ids()


def test_the_proving_tests_named_in_the_guarantees_exist(test_ids: list[str]) -> None:
    tables = guarantees_tables()
    assert "docs/reliability.md" in tables
    problems = []
    for page, rows in tables.items():
        for row in rows:
            cells = row.strip().strip("|").split("|")
            assert len(cells) == 2, f"{page}: a row needs a guarantee and its proof: {row[:80]}"
            guarantee, proof = cells
            citations, strays = cited_tests(proof)
            where = f"{page}: {guarantee.strip()[:50]!r}"
            if not citations:
                problems.append(f"{where}: cites no test")
            problems += [f"{where}: `{word}` is not a test name" for word in strays]
            problems += [
                f"{where}: `{name}` is not collected" for name in unresolved(citations, test_ids)
            ]
    assert not problems, "\n".join(problems)


def test_no_tracked_file_points_outside_the_repository() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    outside = re.compile(r"\.\./shared|/work/|contract decision \d|design\.md")
    offenders = []
    for name in tracked:
        path = ROOT / name
        if (
            path.suffix not in {".py", ".md", ".toml", ".sh", ".ipynb", ".txt", ""}
            or not path.is_file()
        ):
            continue
        if name == "tests/test_docs.py":
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        offenders += [f"{name}: {m.group(0)}" for m in outside.finditer(text)]
    assert offenders == []


def test_every_module_the_architecture_names_exists() -> None:
    """``docs/architecture.md`` names modules as ``_layer/module.py`` and in its layers table;
    each must be a module of the package as it is now."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    package = ROOT / "miragic_nb"
    named = set(re.findall(r"`((?:_\w+|emulator)/\w+\.py)`", text))
    for row in re.findall(r"^\| `(_\w+)` \| (.+?) \|", text, flags=re.MULTILINE):
        layer, modules = row
        named |= {f"{layer}/{name}.py" for name in re.findall(r"`(\w+)`", modules)}
    for layer, modules in re.findall(r"`(_\w+)` \(([^)]*)\)", text):
        named |= {f"{layer}/{name}.py" for name in re.findall(r"`(\w+)`", modules)}
    assert len(named) > 30
    missing = sorted(name for name in named if not (package / name).is_file())
    assert missing == []
    # And the other way: every module of a layer is named, so a new one is placed on the map.
    modules = {
        path.relative_to(package).as_posix()
        for path in package.glob("_*/*.py")
        if path.name != "__init__.py"
    }
    assert sorted(modules - named) == []


#: Paths in the docs that name a user's own files in an example, not files of this repository.
USER_EXAMPLE_PATHS = {"tests/test_thumbnails.py", "notebooks/NAME.ipynb"}


def test_every_repository_file_the_docs_name_exists() -> None:
    """A file of the repository named in the README, CONTRIBUTING or ``docs/`` (a test file,
    a script, a benchmark, a notebook) exists where the text says, so a command copied from
    the docs runs."""
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
    path = re.compile(
        r"(?<![\w/.-])(?:tests|miragic_nb|benchmarks|scripts|notebooks)/[\w/.-]+\.(?:py|sh|ipynb)"
    )
    named = {(page.name, m.group(0)) for page in pages for m in path.finditer(page.read_text())}
    assert len(named) > 40
    missing = sorted(
        f"{page}: {name}"
        for page, name in named
        if name not in USER_EXAMPLE_PATHS and not (ROOT / name).exists()
    )
    assert missing == []
