"""Cleaning URLs before they are kept: one rule for the history, metadata and messages."""

from __future__ import annotations

import re

#: A URL's scheme (optional, for ``//user@host``) and ``//``, then its userinfo up to the last
#: ``@`` before the path.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*:)?(//)[^/?#]*@")


def strip_userinfo(url: str) -> str:
    """``url`` without a ``user:password@`` part: credentials are never stored or shown."""
    return _USERINFO.sub(r"\1\2", url, count=1) if "@" in url else url
