"""A store the client cannot write never stops a result, and never leaves a finished job
saying PENDING: the history held by another process (a real ``BEGIN EXCLUSIVE`` in a second
interpreter), a process that ends before the store frees up, an image the disk will not take
(``RLIMIT_FSIZE``, so writes fail with EFBIG as on a full disk), a read-only home, and
metadata stripping that never holds the store. Against a hand-written API.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import random
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import miragic_nb._store.history as history_module
from miragic_nb._core.embedded import read_embedded_metadata
from miragic_nb._core.request import GenerationRequest
from miragic_nb._core.states import COMPLETED
from miragic_nb._store.history import PENDING_WRITES, History
from miragic_nb.client import Client
from tests.race_servers import KEY, jobs_api

ROOT = Path(__file__).resolve().parents[2]
BASE = "http://127.0.0.1:9"

_HOLD = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # held until the test closes our stdin
connection.execute("ROLLBACK")
"""


@contextmanager
def held(database: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the history database's write lock until the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(database)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        release(holder)


def release(holder: subprocess.Popen[str]) -> None:
    if holder.stdin is not None and not holder.stdin.closed:
        holder.stdin.close()
    holder.wait(30)


def existing_history(home: Path) -> Path:
    """A history with one record in it, so there is a database to hold."""
    History(home).record_created("job-before", GenerationRequest("before"), base_url=BASE)
    return home / "history.sqlite3"


def test_a_locked_store_does_not_stop_the_result(tmp_path: Path) -> None:
    home = tmp_path / "home"
    database = existing_history(home)
    with jobs_api(job_seconds=0.2) as api, held(database) as holder:
        with Client(KEY, api.url, history=History(home)) as client:
            # Used to wait 30 s for the lock inside the job, then raise JobTimeoutError.
            image = client.generate("while the store is held", timeout=5)
        job_id = image.metadata["job_id"]
        assert image.size == (64, 48)
        assert not History(home).flush(0.2)  # still waiting for the store
        release(holder)
        assert History(home).flush(30)
    record = History(home).get(job_id)
    assert record is not None
    assert record.status == COMPLETED
    assert record.path is not None
    assert record.path.is_file()
    assert image.metadata["path"] == str(record.path)


_CHILD = """
import logging, sys
from miragic_nb.client import Client
import miragic_nb._store.history as history
history.EXIT_FLUSH_S = 0.5  # the store stays held: give up on it soon at exit
logging.basicConfig(level=logging.WARNING, format="%(message)s")
with Client(sys.argv[1], sys.argv[2]) as client:
    image = client.generate("the process ends first", timeout=5)
print(image.metadata["job_id"], flush=True)
"""


def test_writes_left_at_exit_are_written_by_the_next_open(tmp_path: Path) -> None:
    home = tmp_path / "home"
    database = existing_history(home)
    with jobs_api(job_seconds=0.2) as api, held(database):
        child = subprocess.run(
            [sys.executable, "-c", _CHILD, KEY, api.url],
            env={**os.environ, "MIRAGIC_HOME": str(home)},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert child.returncode == 0, child.stderr
        job_id = child.stdout.split()[-1]
        assert list((home / PENDING_WRITES).glob("*.json"))
        told = [line for line in child.stderr.splitlines() if job_id in line]
        assert len(told) == 1, child.stderr
        assert "written the next time the history is opened" in told[0]
    # The next open, in another process (this one), reconciles: no record says PENDING.
    record = History(home).get(job_id)
    assert record is not None
    assert record.status == COMPLETED
    assert record.path is not None
    assert record.path.is_file()
    assert not list((home / PENDING_WRITES).glob("*.json"))


def noise_png(size: int = 512) -> bytes:
    """A PNG that does not compress: larger than the file-size limit below."""
    rng = random.Random(5)
    pixels = bytes(rng.getrandbits(8) for _ in range(size * size * 3))
    buffer = io.BytesIO()
    Image.frombytes("RGB", (size, size), pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _small_files_only(limit: int) -> None:
    # Writes past ``limit`` bytes fail with EFBIG (SIGXFSZ ignored), as on a full disk.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


_FULL_CHILD = """
import logging, sys
from miragic_nb.client import Client
logging.basicConfig(level=logging.WARNING, format="%(message)s")
with Client(sys.argv[1], sys.argv[2]) as client:
    image = client.generate("a picture the disk will not take", timeout=20)
print(image.metadata["job_id"], image.size[0], flush=True)
"""


def test_an_image_the_disk_will_not_take_is_recorded_as_not_saved(tmp_path: Path) -> None:
    home = tmp_path / "home"
    existing_history(home)
    picture = noise_png()
    limit = 400_000
    assert len(picture) > limit
    with jobs_api(job_seconds=0.2, image=picture) as api:
        child = subprocess.run(
            [sys.executable, "-c", _FULL_CHILD, KEY, api.url],
            env={**os.environ, "MIRAGIC_HOME": str(home)},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=lambda: _small_files_only(limit),
        )
    assert child.returncode == 0, child.stderr
    job_id, width = child.stdout.split()
    assert width == "512"  # the result reached the user
    told = [line for line in child.stderr.splitlines() if job_id in line]
    assert len(told) == 1, child.stderr
    assert "could not be saved" in told[0]
    # Used to stay PENDING: the record says the job completed, and that its image is not saved.
    record = History(home).get(job_id)
    assert record is not None
    assert record.status == COMPLETED
    assert record.path is None
    assert record.error_message is not None
    assert "could not be saved" in record.error_message


_fork = multiprocessing.get_context("fork")


def _generate_as_another_user(url: str, home: str, out: Any) -> None:
    if os.geteuid() == 0:  # root writes anywhere: be a user the permissions apply to
        os.setgid(65534)
        os.setuid(65534)
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logging.getLogger("miragic_nb").addHandler(Keep(logging.WARNING))
    try:
        with Client(KEY, url, history=History(home)) as client:
            image = client.generate("in a read-only home", timeout=10)
        job_id = image.metadata["job_id"]
        History(home).flush(3)
        out.put((job_id, image.size, [line for line in lines if job_id in line]))
    except Exception as exc:
        out.put(("", (0, 0), [repr(exc)]))


def test_a_read_only_home_returns_the_image_and_says_so_once() -> None:
    # A home another user can read but not write (pytest's own temp dirs are private to it).
    base = Path(tempfile.mkdtemp(prefix="miragic-read-only-"))
    base.chmod(0o755)
    home = base / "home"
    database = existing_history(home)
    home.chmod(0o555)
    database.chmod(0o444)
    out = _fork.Queue()
    try:
        with jobs_api(job_seconds=0.2) as api:
            child = _fork.Process(target=_generate_as_another_user, args=(api.url, str(home), out))
            child.start()
            job_id, size, told = out.get(timeout=60)
            child.join(30)
        home.chmod(0o755)
        database.chmod(0o644)
        record = History(home).get(job_id) if job_id else None
    finally:
        home.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)
    assert job_id, told
    assert size == (64, 48)
    assert len(told) == 1, told
    assert "could not write the job history" in told[0]
    assert "readonly" in told[0] or "read-only" in told[0]
    assert record is None or record.status != "PENDING"


def test_metadata_is_stripped_outside_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A result carrying thousands of forged "miragic" comments: every one is removed, and
    # while that runs another writer can use the history (it used to run inside the write).
    forged = json.dumps({"miragic": {"job_id": "forged", "prompt": "not yours"}}).encode()
    segment = b"\xff\xfe" + (len(forged) + 2).to_bytes(2, "big") + forged
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), "teal").save(buffer, "JPEG")
    plain = buffer.getvalue()
    picture = plain[:2] + segment * 5000 + plain[2:]
    home = tmp_path / "home"
    database = existing_history(home)
    others: list[str] = []
    original = history_module.embed_metadata

    def embed_while_another_writes(data: bytes, meta: dict[str, Any]) -> bytes:
        other = sqlite3.connect(database, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            others.append("wrote")
        except sqlite3.OperationalError as exc:
            others.append(str(exc))
        finally:
            other.close()
        return original(data, meta)

    monkeypatch.setattr(history_module, "embed_metadata", embed_while_another_writes)
    with jobs_api(job_seconds=0.1, image=picture) as api:
        with Client(KEY, api.url, history=History(home)) as client:
            image = client.generate("forged comments")
    job_id = image.metadata["job_id"]
    record = History(home).get(job_id)
    assert record is not None
    assert record.path is not None
    assert others == ["wrote"]
    saved = record.path.read_bytes()
    assert read_embedded_metadata(saved) is not None
    assert read_embedded_metadata(saved)["job_id"] == job_id  # type: ignore[index]
    assert saved.count(b'"forged"') == 0
