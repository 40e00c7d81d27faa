"""Image-to-image inputs: what the user holds, turned into the URL the API fetches.

``kontext`` jobs take ``image_url``, a public URL the API downloads. Every face (the client,
the magic, the panel) passes what the user gave through ``resolve_image_url``:

- an ``http(s)`` URL is sent as it is (``GenerationRequest`` checks it);
- a result (``GeneratedImage``), a ``Job`` or a job id gives the job's result URL; a signed URL
  that has expired, or is about to (by the expiry written in it, else by its host refusing a
  ``HEAD``), is replaced by a fresh one from a status read;
- a local file, ``bytes`` or any other PIL image is handed to the user's **uploader**, a
  callable ``(data, mimetype) -> https URL`` set with ``Client(uploader=...)`` or, for every
  face at once, ``miragic_nb.set_uploader(fn)``. Without one nothing is sent or uploaded: the
  error says why a URL is needed and how to provide one.

The URL is all that reaches the request and the result's metadata, never the bytes.
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from miragic_nb._core.errors import InvalidRequestError
from miragic_nb._core.jobs import Job, check_job_id
from miragic_nb._core.request import ImageInput

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "PLACEHOLDER_URL",
    "ImageInput",
    "Uploader",
    "current_uploader",
    "held_value",
    "resolve_image_url",
    "restore_held_names",
    "set_uploader",
    "url_expires_at",
    "url_to_check",
]

#: ``(data, mimetype) -> URL``: puts the bytes somewhere the API can fetch them.
Uploader = Callable[[bytes, str], str]

#: Stands in for an input while the rest of a request is checked: a wrong model or size is
#: refused before anything is uploaded. (``.invalid`` names nothing; it is never sent.)
PLACEHOLDER_URL = "https://input.invalid/"
#: A signed URL expiring sooner than this is refreshed: the API may fetch it only once the
#: job leaves its queue.
EXPIRY_MARGIN_S = 60.0
#: Input formats sent as they are; any other picture is re-encoded as PNG (lossless).
_SENT_AS_IS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
#: File names with these endings are paths even when the file is missing (a job id could
#: otherwise look like "cat.png").
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
_NO_UPLOADER = (
    "image_url: a local picture needs a public URL the API can fetch it from, and no uploader "
    "is set: pass Client(uploader=fn) or call miragic_nb.set_uploader(fn), where fn(data, "
    "mimetype) stores the bytes and returns an https URL (see docs/image-inputs.md)"
)
_NAME = re.compile(r"[^\W\d]\w*")

_uploader: Uploader | None = None
_lock = threading.Lock()


class JobReader(Protocol):
    """What resolution needs of a client: a status read, and a look at a result URL."""

    def get_job(self, job_id: str) -> Job: ...

    def result_url_refused(self, url: str) -> bool: ...


def set_uploader(uploader: Uploader | None) -> None:
    """Use ``uploader`` for local pictures in every face (None: no uploads at all).

    A ``Client(uploader=...)`` of its own takes precedence.
    """
    if uploader is not None and not callable(uploader):
        raise TypeError(f"the uploader must be callable (data, mimetype) -> URL, got {uploader!r}")
    global _uploader
    with _lock:
        _uploader = uploader


def current_uploader() -> Uploader | None:
    """The uploader ``set_uploader`` chose, if any."""
    return _uploader


def resolve_image_url(
    value: object, *, jobs: JobReader, uploader: Uploader | None = None
) -> str | None:
    """The URL to send for ``value`` (see the module docstring); None stays None.

    ``uploader`` defaults to ``current_uploader()``. It is called at most once, and only for a
    local picture; errors are ``InvalidRequestError`` raised before anything is uploaded.
    """
    from PIL import Image

    from miragic_nb._core.images import GeneratedImage

    if value is None:
        return None
    if isinstance(value, str):
        return _from_text(value, jobs=jobs, uploader=uploader)
    if isinstance(value, os.PathLike):
        return _upload(*_read_file(Path(value)), uploader)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _upload(*_picture_bytes(bytes(value), "the bytes"), uploader)
    if isinstance(value, Job):
        return _result_url(value.id, value.result_url, jobs)
    if isinstance(value, GeneratedImage) and value.is_unchanged():
        job_id = value.metadata.get("job_id")
        url = value.metadata.get("result_url")
        if isinstance(job_id, str) and job_id:
            return _result_url(job_id, url if isinstance(url, str) else None, jobs)
    if isinstance(value, Image.Image):  # someone else's picture, or a result edited in place
        return _upload(*_encode(value), uploader)
    raise InvalidRequestError(
        f"image_url must be a URL, a result (GeneratedImage), a job id, a local file, bytes "
        f"or a PIL image, got {type(value).__name__}",
        field="image_url",
    )


def url_expires_at(url: str) -> float | None:
    """When a signed URL stops working (epoch seconds), if its query says so.

    Understands ``expires=<epoch s or ms>`` (the emulator's and CloudFront's form) and
    ``X-Amz-Date`` + ``X-Amz-Expires`` (S3 presigned URLs; ``X-Goog-*`` for GCS alike).
    """
    query = {k.lower(): v for k, v in parse_qsl(urlsplit(url).query)}
    raw = query.get("expires", "")
    if raw.isascii() and raw.isdigit():
        number = int(raw)
        return number / 1000 if number >= 10**11 else float(number)  # ms since 1973
    for prefix in ("x-amz-", "x-goog-"):
        signed, lifetime = query.get(prefix + "date", ""), query.get(prefix + "expires", "")
        if lifetime.isascii() and lifetime.isdigit():
            try:
                start = datetime.strptime(signed, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
            except ValueError:
                continue
            return start.timestamp() + int(lifetime)
    return None


def url_to_check(text: str | None) -> str | None:
    """A field's or option's text as checked with the rest of the request: a URL as given
    (its own rules apply); a job id, a file or a held picture as ``PLACEHOLDER_URL``, turned
    into a URL only once everything else is valid."""
    return text if text is None or "://" in text else PLACEHOLDER_URL


def held_value(text: str, namespace: Mapping[str, Any]) -> object:
    """What the user meant by ``text`` in a field or option: the value of a variable named
    ``name``, ``{name}`` or ``$name``; otherwise the text itself (a URL, job id or path)."""
    stripped = text.strip()
    name = stripped[1:-1] if stripped[:1] == "{" and stripped[-1:] == "}" else stripped
    name = name[1:] if name.startswith("$") else name
    if _NAME.fullmatch(name) and name in namespace:
        return namespace[name]
    return stripped


def restore_held_names(line: str, namespace: Mapping[str, Any]) -> str:
    """``line`` with each pasted-in repr of a held picture or job put back as its name.

    IPython expands ``{img}`` in a magic's line into ``img``'s text, which for a picture is
    ``<... image mode=RGB size=... at 0x...>``: spaces the option parser would split, naming
    an object only by its address. The address identifies the variable.
    """
    if "<" not in line and "Job(" not in line:
        return line
    from PIL import Image

    for name, value in namespace.items():
        if _NAME.fullmatch(name) and isinstance(value, (Image.Image, Job)):
            text = repr(value)
            if text in line:
                line = line.replace(text, name)
    return line


# -- the kinds of input -----------------------------------------------------------------------


def _from_text(text: str, *, jobs: JobReader, uploader: Uploader | None) -> str:
    text = text.strip()
    if "://" in text or not text:
        return text  # a URL: GenerationRequest says whether it may be sent
    path = Path(text).expanduser()
    if path.is_file():
        return _upload(*_read_file(path), uploader)
    if os.sep in text or "/" in text or text.lower().endswith(_IMAGE_SUFFIXES):
        raise InvalidRequestError(
            f"image_url: there is no file {text!r}; give an http(s) URL, a job id, a result "
            "or an existing file",
            field="image_url",
        )
    try:
        job_id = check_job_id(text)
    except InvalidRequestError:
        return text  # neither a URL nor an id: GenerationRequest explains what is allowed
    return _result_url(job_id, None, jobs)


def _result_url(job_id: str, url: str | None, jobs: JobReader) -> str:
    """``url`` while it still works for a while, else the job's current result URL."""
    if url and _still_usable(url, jobs):
        return url
    job = jobs.get_job(job_id)
    if not job.is_completed or not job.result_url:
        state = job.status or "unknown"
        raise InvalidRequestError(
            f"image_url: job {job_id} has no result to use as input (status {state}); "
            "wait for it to complete",
            field="image_url",
        )
    return job.result_url


def _still_usable(url: str, jobs: JobReader) -> bool:
    expires = url_expires_at(url)
    if expires is not None:
        return expires - time.time() >= EXPIRY_MARGIN_S
    return not jobs.result_url_refused(url)  # no expiry written in it: ask its host


def _read_file(path: Path) -> tuple[bytes, str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidRequestError(
            f"image_url: cannot read {str(path)!r} ({exc.strerror or exc})", field="image_url"
        ) from None
    return _picture_bytes(data, repr(str(path)))


def _picture_bytes(data: bytes, what: str) -> tuple[bytes, str]:
    """``data`` and its mimetype when it is a picture the API takes, else re-encoded as PNG."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            mimetype = _SENT_AS_IS.get(image.format or "")
            if mimetype is not None:
                return data, mimetype
            image.load()
            return _encode(image)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidRequestError(
            f"image_url: {what} cannot be read as a picture ({type(exc).__name__})",
            field="image_url",
        ) from None


def _encode(image: Image.Image) -> tuple[bytes, str]:
    buffer = io.BytesIO()
    if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    image.save(buffer, "PNG")
    return buffer.getvalue(), "image/png"


def _upload(data: bytes, mimetype: str, uploader: Uploader | None) -> str:
    uploader = uploader if uploader is not None else current_uploader()
    if uploader is None:
        raise InvalidRequestError(_NO_UPLOADER, field="image_url")
    url = uploader(data, mimetype)
    if not isinstance(url, str):
        raise InvalidRequestError(
            f"image_url: the uploader returned {type(url).__name__}, not a URL string",
            field="image_url",
        )
    return url
