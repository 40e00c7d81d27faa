"""The documentation site builds with ``--strict`` and its API reference follows the code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import miragic_nb

ROOT = Path(__file__).resolve().parent.parent
# mkdocs and its plugins come with the dev install, not with the oldest-versions run.
pytestmark = pytest.mark.devtools


@pytest.fixture(scope="module")
def api_page(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The built API reference page (the site is built once, into a temporary directory)."""
    site = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return (site / "api" / "index.html").read_text(encoding="utf-8")


def documented(page: str) -> set[str]:
    """Every object the page has a heading for, by its full dotted path."""
    return set(re.findall(r'id="(miragic_nb(?:\.\w+)+)"', page))


def test_the_api_reference_documents_client_generate(api_page: str) -> None:
    names = documented(api_page)
    assert "miragic_nb.Client.generate" in names
    assert "miragic_nb.Client.generate_many" in names
    assert "miragic_nb.generate" in names


def test_the_api_reference_documents_every_public_name(api_page: str) -> None:
    missing = [
        name for name in miragic_nb.__all__ if f"miragic_nb.{name}" not in documented(api_page)
    ]
    assert missing == [], "add `::: miragic_nb.NAME` to docs/api.md for each"
