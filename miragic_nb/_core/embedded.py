"""Metadata inside saved image files: a JPEG COM segment or a PNG iTXt chunk holding
``{"miragic": {...}}``, added without re-encoding a pixel.

A server's own image may already carry such a segment or chunk (by accident or to forge a
different prompt or job id); ``embed_metadata`` removes it first, so what a saved file says
about itself is always what we recorded.
"""

from __future__ import annotations

import json
import logging
import re
import zlib
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("miragic_nb")

#: Key of the embedded image metadata (PNG text keyword; top-level key of the JPEG comment).
METADATA_KEY = "miragic"
_JPEG_MAX_SEGMENT = 65533  # a segment's 16-bit length counts itself
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT_CHUNKS = (b"tEXt", b"iTXt", b"zTXt")
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp"}


def image_extension(data: bytes, fallback_format: str | None) -> str:
    """The file extension for image bytes, from their magic number (not a claimed format)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data.startswith(_PNG_SIGNATURE):
        return "png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if fallback_format is None:
        return ""
    return _EXTENSIONS.get(fallback_format, re.sub(r"[^a-z0-9]", "", fallback_format.lower()))


def embed_metadata(data: bytes, meta: dict[str, Any]) -> bytes:
    """``data`` with ``meta`` embedded (``read_embedded_metadata`` reads it back).

    Any ``miragic`` metadata already in the file is removed first. A JPEG comment or a PNG
    iTXt chunk; other formats (or a malformed file) come back unchanged.
    """
    try:
        if data.startswith(b"\xff\xd8"):
            return jpeg_insert_comment(_jpeg_without_ours(data), _jpeg_payload(meta))
        if data.startswith(_PNG_SIGNATURE):
            text = json.dumps(meta, ensure_ascii=False, separators=(",", ":"))
            return png_insert_itxt(_png_without_ours(data), METADATA_KEY, text)
    except ValueError as exc:
        log.warning("saving job %s without embedded metadata: %s", meta.get("job_id"), exc)
        return data
    # Other formats are saved as sent; the history record still says how they were made.
    return data


def read_embedded_metadata(data: bytes) -> dict[str, Any] | None:
    """The ``{"miragic": ...}`` metadata embedded in saved image bytes, or None."""
    if data.startswith(b"\xff\xd8"):
        for _, payload in _jpeg_comments(data):
            value = _our_comment(payload)
            if value is not None:
                return value
        return None
    if data.startswith(_PNG_SIGNATURE):
        for keyword, text in _png_texts(data):
            if keyword == METADATA_KEY:
                try:
                    value = json.loads(text)
                except ValueError:
                    return None
                return value if isinstance(value, dict) else None
    return None


def _our_comment(payload: bytes) -> dict[str, Any] | None:
    """The metadata in a JPEG comment, if it is one of ours (``{"miragic": {...}}``)."""
    try:
        value = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if isinstance(value, dict) and isinstance(value.get(METADATA_KEY), dict):
        return dict(value[METADATA_KEY])
    return None


def _jpeg_payload(meta: dict[str, Any]) -> bytes:
    def encode(value: dict[str, Any]) -> bytes:
        text = json.dumps({METADATA_KEY: value}, ensure_ascii=False, separators=(",", ":"))
        return text.encode("utf-8", "backslashreplace")

    payload = encode(meta)
    prompt = meta.get("prompt")
    # One COM segment holds 64 KB; only an absurdly long prompt is shortened to fit.
    while len(payload) > _JPEG_MAX_SEGMENT and isinstance(prompt, str) and prompt:
        prompt = prompt[: max(len(prompt) - (len(payload) - _JPEG_MAX_SEGMENT) - 64, 0)]
        payload = encode({**meta, "prompt": prompt, "prompt_truncated": True})
    return payload


def jpeg_insert_comment(data: bytes, comment: bytes) -> bytes:
    """Insert a COM segment into JPEG bytes, leaving every other byte as it was.

    It goes after the leading APPn (JFIF/EXIF must stay first) and COM segments, before the
    tables and frame, so it is the comment Pillow reports as ``info["comment"]``.
    """
    if not data.startswith(b"\xff\xd8"):
        raise ValueError("not JPEG data (no SOI marker)")
    if len(comment) > _JPEG_MAX_SEGMENT:
        raise ValueError(f"a JPEG comment holds at most {_JPEG_MAX_SEGMENT} bytes")
    position = 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if not (0xE0 <= marker <= 0xEF or marker == 0xFE):
            break
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if length < 2 or position + 2 + length > len(data):
            break  # malformed: stay on the last sound segment boundary
        position += 2 + length
    segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
    return data[:position] + segment + data[position:]


def _jpeg_without_ours(data: bytes) -> bytes:
    """JPEG bytes without the COM segments ``read_embedded_metadata`` would take as ours."""
    kept = data
    for start, payload in reversed(list(_jpeg_comments(data))):
        if _our_comment(payload) is not None:
            end = start + 4 + len(payload)
            kept = kept[:start] + kept[end:]
    return kept


def _jpeg_comments(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(offset of the marker, payload) of the COM segments before the first scan."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xDA or marker == 0xD9:  # start of scan / end of image
            return
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if length < 2:
            return
        if marker == 0xFE:
            yield position, data[position + 4 : position + 2 + length]
        position += 2 + length


def png_insert_itxt(data: bytes, keyword: str, text: str) -> bytes:
    """Insert an uncompressed UTF-8 ``iTXt`` chunk right after ``IHDR``; nothing else changes.

    Early text chunks are in ``Image.open(path).info`` before any pixel data is read.
    """
    if not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not PNG data (no signature and IHDR)")
    name = keyword.encode("latin-1")
    if not 1 <= len(name) <= 79 or b"\x00" in name:
        raise ValueError(f"invalid PNG text keyword {keyword!r}")
    end_of_ihdr = 8 + 12 + int.from_bytes(data[8:12], "big")
    # keyword, NUL, compression flag 0, method 0, empty language tag + NUL, empty
    # translated keyword + NUL, then the text.
    body = name + b"\x00\x00\x00\x00\x00" + text.encode("utf-8", "backslashreplace")
    chunk = (
        len(body).to_bytes(4, "big")
        + b"iTXt"
        + body
        + zlib.crc32(b"iTXt" + body).to_bytes(4, "big")
    )
    return data[:end_of_ihdr] + chunk + data[end_of_ihdr:]


def _png_without_ours(data: bytes) -> bytes:
    """PNG bytes without any text chunk (tEXt, iTXt, zTXt) under our keyword."""
    ours = METADATA_KEY.encode("latin-1") + b"\x00"
    parts = [data[:8]]
    last = 8
    for start, end, kind, body in _png_chunks(data):
        if not (kind in _PNG_TEXT_CHUNKS and body.startswith(ours)):
            parts.append(data[start:end])
        last = end
    parts.append(data[last:])  # anything after the last whole chunk, as it was
    return b"".join(parts)


def _png_chunks(data: bytes) -> Iterator[tuple[int, int, bytes, bytes]]:
    """(start, end, type, body) of each whole chunk, up to and including IEND."""
    position = 8
    while position + 12 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        end = position + 12 + length
        if end > len(data):
            return
        kind = data[position + 4 : position + 8]
        yield position, end, kind, data[position + 8 : position + 8 + length]
        if kind == b"IEND":
            return
        position = end


def _png_texts(data: bytes) -> Iterator[tuple[str, str]]:
    """(keyword, text) of the uncompressed tEXt and iTXt chunks."""
    for _, _, kind, body in _png_chunks(data):
        if kind == b"tEXt" and b"\x00" in body:
            keyword, _, text = body.partition(b"\x00")
            yield keyword.decode("latin-1"), text.decode("latin-1")
        elif kind == b"iTXt" and body.count(b"\x00") >= 3:
            keyword, _, rest = body.partition(b"\x00")
            if rest[:1] == b"\x00":  # uncompressed
                _, _, rest = rest[2:].partition(b"\x00")  # language tag
                _, _, text = rest.partition(b"\x00")  # translated keyword
                yield keyword.decode("latin-1"), text.decode("utf-8", "replace")
