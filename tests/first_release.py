"""The first release's history files, written by the first release's own code.

The first release kept one JSON file per job (``<home>/jobs/<job>.json``), images beside them
and lock files. ``tests/data/first-release-home/`` holds a small such home, committed so the
migration tests need no git history (a tarball or a shallow clone has none). This script made
it: it takes the first release's ``miragic_nb/history.py`` (and the modules it imports) from
git, loads them as a throwaway package, and records real jobs with them::

    python -m tests.first_release tests/data/first-release-home

Run it again only to add cases; the files it writes are what a first-release user has on disk.
"""

from __future__ import annotations

import importlib
import io
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: The last commit whose history module wrote JSON records.
FIRST_RELEASE = "191a9fd"
_MODULES = ("history", "request", "errors")
BASE = "http://127.0.0.1:8765"
#: The committed home this script wrote.
FIXTURE = ROOT / "tests" / "data" / "first-release-home"

#: (job id, prompt, seed, how the job ended), in the order they are recorded.
JOBS: list[tuple[str, str, int | None, str]] = [
    ("job-done-jpeg", "A lighthouse on a cliff at dusk — 灯台 ☼", 42, "jpeg"),
    ("job-done-png", "a red fox in snow", 7, "png"),
    ("job-failed", "a forbidden thing", 3, "failed"),
    ("job-timeout-then-done", "slow harbour at night", 11, "timeout-then-jpeg"),
    ("job-pending", "still running somewhere", None, "pending"),
    ("../odd id/with slashes", "an id the server chose badly", 5, "jpeg"),
]


def copy_fixture(home: Path) -> Path:
    """A fresh copy of the committed first-release home at ``home``."""
    shutil.copytree(FIXTURE, home)
    return home


def load_first_release(where: Path) -> ModuleType:
    """The first release's history module, from git, as ``<package>.history``."""
    package = f"first_release_{abs(hash(str(where)))}"
    folder = where / package
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    for name in _MODULES:
        source = subprocess.run(
            ["git", "show", f"{FIRST_RELEASE}:miragic_nb/{name}.py"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
        (folder / f"{name}.py").write_bytes(source)
    sys.path.insert(0, str(where))
    try:
        return importlib.import_module(f"{package}.history")
    finally:
        sys.path.remove(str(where))


def _image(kind: str, seed: int) -> bytes:
    from PIL import Image

    rng = random.Random(seed)
    picture = Image.frombytes("RGB", (16, 12), rng.randbytes(16 * 12 * 3))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG" if kind == "png" else "JPEG", quality=80)
    return buffer.getvalue()


def _result(old: ModuleType, job_id: str, request: Any, kind: str, seed: int) -> Any:
    from miragic_nb._core.images import GeneratedImage

    meta = {
        "job_id": job_id,
        **request.describe(),
        "result_url": f"{BASE}/uploads/{seed}.{kind}?sig=abc",
        "elapsed_s": 4.5,
        "processing_s": 3.25,
        "credits_used": 1.0,
        "created_at": "2025-01-02T03:04:05+00:00",
        "base_url": BASE,
    }
    return GeneratedImage.from_bytes(_image(kind, seed), meta)


def write_home(home: Path) -> None:
    """Record ``JOBS`` into ``home`` with the first release's code."""
    with tempfile.TemporaryDirectory() as scratch:
        old = load_first_release(Path(scratch))
        request_module = sys.modules[old.__name__.rsplit(".", 1)[0] + ".request"]
        store = old.History(home)
        for job_id, prompt, seed, ending in JOBS:
            request = request_module.GenerationRequest(
                prompt, model="turbo", width=512, height=384, seed=seed, enhance=True
            )
            store.record_created(job_id, request, base_url=BASE)
            if ending == "failed":
                store.record_status(job_id, "FAILED", error_message="NSFW content detected")
            elif ending == "timeout-then-jpeg":
                store.record_status(job_id, "TIMEOUT", error_message="did not finish in 300s")
                store.record_result(_result(old, job_id, request, "jpeg", seed or 0))
            elif ending in ("jpeg", "png"):
                store.record_result(_result(old, job_id, request, ending, seed or 0))


if __name__ == "__main__":
    target = Path(sys.argv[1])
    if target.exists():
        raise SystemExit(f"{target} exists; remove it first")
    write_home(target)
    print(f"wrote {len(JOBS)} first-release records into {target}")
