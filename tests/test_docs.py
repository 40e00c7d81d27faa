"""The documents a user reads agree with each other and stay inside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def guarantees_table(markdown: str) -> list[str]:
    """The rows of the first table whose header is ``| guarantee | proved by |``."""
    lines = markdown.splitlines()
    start = lines.index("| guarantee | proved by |")
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_the_readme_lists_every_guarantee_of_the_reliability_page() -> None:
    readme = guarantees_table((ROOT / "README.md").read_text(encoding="utf-8"))
    reliability = guarantees_table((ROOT / "docs" / "reliability.md").read_text(encoding="utf-8"))
    assert len(reliability) > 10
    assert readme == reliability, "copy the guarantees table of docs/reliability.md into README.md"


def test_the_proving_tests_named_in_the_guarantees_exist() -> None:
    rows = guarantees_table((ROOT / "docs" / "reliability.md").read_text(encoding="utf-8"))
    sources = {
        path.name: path.read_text(encoding="utf-8") for path in ROOT.glob("tests/**/test_*.py")
    }
    missing = []
    for row in rows:
        proof = row.rsplit("|", 2)[1]
        module = None
        for name in re.findall(r"`([^`]+)`", proof):
            path, _, test = name.partition("::")
            if path.endswith(".py"):
                module = Path(path).name
            else:
                test = path
            if module is None or not test.startswith("test_"):
                continue
            function = test.split("[")[0]
            if module not in sources or f"def {function}(" not in sources[module]:
                missing.append(f"{module}::{function}")
    assert missing == []


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
