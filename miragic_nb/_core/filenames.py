"""File names we choose for a job's files, from its id (which the server chose, not us), and
how the faces write files into folders others may also write to."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from pathlib import Path

_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")


def safe_stem(job_id: str) -> str:
    """A file-name-safe stem for a job id; distinct ids never share one.

    A plain id (letters, digits, ``_``, ``-``) is used as it is; anything else (slashes, dots,
    spaces, very long ids) is cleaned and disambiguated by a hash, so "a/b" and "a_b" do not
    collide and no id can name a file outside the folder it is joined to.
    """
    if _SAFE_ID.fullmatch(job_id):
        return job_id
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", job_id)[:64].strip("_-") or "job"
    digest = hashlib.sha256(job_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{cleaned}~{digest}"


def is_plain_name(name: str) -> bool:
    """A bare file name (no folder, not hidden, not ``..``), safe to join to a folder."""
    return bool(name) and not name.startswith(".") and "/" not in name and "\\" not in name


#: Create only a new file, and never through a symbolic link.
_EXCLUSIVE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)


def write_file_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all, never through a link someone planted in the folder.

    The temporary file beside it has an unpredictable name and is created exclusively
    (``O_CREAT | O_EXCL | O_NOFOLLOW``: a link of that name makes the open fail, not follow);
    the rename then replaces whatever entry ``path`` is (a link included) instead of writing
    through it.
    """
    partial = path.with_name(f".{path.name}.{secrets.token_hex(8)}.partial")
    handle = os.open(partial, _EXCLUSIVE | getattr(os, "O_BINARY", 0), 0o644)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
