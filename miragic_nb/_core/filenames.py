"""File names we choose for a job's files, from its id (which the server chose, not us)."""

from __future__ import annotations

import hashlib
import re

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
