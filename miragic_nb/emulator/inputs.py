"""Fetching a ``kontext`` job's input image, from loopback hosts only.

The emulator must never reach the internet: a URL whose host is not ``localhost`` or a
loopback address is refused without any lookup, and so is a redirect to one. Environment
proxies are ignored, the read has a timeout and the body a size cap.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from http.client import HTTPMessage
from typing import IO
from urllib.parse import urlsplit

from miragic_nb._core.config import is_loopback_host

__all__ = ["InputFetchError", "fetch_input", "is_loopback_url"]

MAX_INPUT_BYTES = 20 * 1024 * 1024


class InputFetchError(Exception):
    """The input image could not be fetched; ``str()`` becomes the job's ``errorMessage``."""


def is_loopback_url(url: str) -> bool:
    return is_loopback_host(urlsplit(url).hostname or "")


class _LoopbackRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        if not is_loopback_url(newurl):
            raise InputFetchError(
                f"image_url redirected to {newurl!r}, which is not a loopback host"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _LoopbackRedirects())


def fetch_input(url: str, *, timeout: float = 5.0, max_bytes: int = MAX_INPUT_BYTES) -> bytes:
    """Return the bytes at ``url`` or raise :class:`InputFetchError` with a clear reason."""
    if not is_loopback_url(url):
        host = urlsplit(url).hostname
        raise InputFetchError(
            f"Could not fetch image_url: host {host!r} is not reachable from the emulator "
            "(it only fetches from loopback hosts, never from the internet)"
        )
    request = urllib.request.Request(url, headers={"User-Agent": "miragic-emulator"})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            data: bytes = response.read(max_bytes + 1)
    except InputFetchError:
        raise
    except urllib.error.HTTPError as exc:
        raise InputFetchError(f"Could not fetch image_url: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputFetchError(f"Could not fetch image_url: {reason}") from exc
    if len(data) > max_bytes:
        raise InputFetchError(f"Could not fetch image_url: larger than {max_bytes} bytes")
    return data
