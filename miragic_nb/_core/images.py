"""Result images: server bytes → a real ``PIL.Image.Image`` that still remembers those bytes.

``GeneratedImage`` is a ``PIL.Image.Image`` subclass. In IPython it displays the server's own
bytes under one mimetype (no PNG re-encode, no PNG+JPEG pair), as long as its pixels are still
the ones those bytes decode to; once changed it displays like any other PIL image. Derived images
(``crop``, ``resize`` ...) are plain PIL images.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Mapping
from typing import Any

from PIL import Image

from miragic_nb._core.embedded import METADATA_KEY
from miragic_nb._core.errors import DownloadError
from miragic_nb._core.provenance import provenance

#: Largest decoded image accepted (pixels); the API's maximum is 2048 × 2048 = 4.2 MP.
MAX_PIXELS = 4096 * 4096
#: Mimetypes IPython frontends render natively, by Pillow format name.
_MIMETYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}
#: The only formats a result is decoded as. Pillow would otherwise try every format it knows:
#: an EPS result would run Ghostscript on the server's PostScript, and rarer decoders (DDS,
#: TIFF, ICO ...) are more code exposed to hostile bytes for images the API never sends.
RESULT_FORMATS = tuple(_MIMETYPES)


class GeneratedImage(Image.Image):
    """A generated image: a real PIL image plus the original bytes and ``info["miragic"]``."""

    original_bytes: bytes
    _pixel_digest: bytes

    @classmethod
    def from_bytes(
        cls, data: bytes, metadata: Mapping[str, Any], *, max_pixels: int = MAX_PIXELS
    ) -> GeneratedImage:
        """Decode ``data``; a non-image or an over-large image is a ``DownloadError``."""
        decoded = decode(data, max_pixels=max_pixels)
        image = cls()
        # Adopt the decoded pixels without copying them (PIL's own Image._new does the same).
        image.__dict__.update({k: v for k, v in vars(decoded).items() if not k.startswith("fp")})
        image.format = decoded.format
        image.info = {**decoded.info, "miragic": dict(metadata)}
        image.original_bytes = bytes(data)
        image._pixel_digest = _digest(image)
        return image

    @property
    def metadata(self) -> dict[str, Any]:
        """How the image was made: job id, prompt, model, size, seed, timings, result URL."""
        value = self.info.get("miragic", {})
        return value if isinstance(value, dict) else {}

    @property
    def mimetype(self) -> str | None:
        """The original bytes' mimetype, when notebook frontends render it natively."""
        return _MIMETYPES.get(self.format or "")

    def is_unchanged(self) -> bool:
        """True while the pixels are still exactly what ``original_bytes`` decode to."""
        return getattr(self, "_pixel_digest", None) == _digest(self)

    def caption(self) -> str:
        """One line: model, size, seed, elapsed time, job id (and "emulator" when it is one)."""
        meta = self.metadata
        parts = [str(meta.get("model", "?")), f"{self.width}×{self.height}"]
        seed = meta.get("seed")
        if seed is None:
            parts.append("random seed")
        else:
            parts.append(f"seed {seed} (random)" if meta.get("seed_chosen") else f"seed {seed}")
        elapsed = meta.get("elapsed_s")
        if isinstance(elapsed, (int, float)):
            parts.append(f"{elapsed:.1f}s")
        if meta.get("job_id"):
            parts.append(f"job {meta['job_id']}")
        if meta.get("emulator"):
            parts.append("emulator (placeholder image)")
        if meta.get("reused"):
            parts.append("reused from history, no credit spent")
        return " · ".join(parts)

    def display_bundle(
        self, *, unchanged: bool | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The mimebundle IPython shows: the original bytes under one image mimetype, and
        the output metadata saying how the image was made (``provenance.py``).

        Changed pixels, or a format frontends cannot show, are re-encoded once as JPEG.
        ``unchanged`` skips the pixel check when the caller has just made it.
        """
        if unchanged is None:
            unchanged = self.is_unchanged()
        mimetype = self.mimetype
        if unchanged and mimetype is not None:
            data = self.original_bytes
        else:
            buffer = io.BytesIO()
            self.convert("RGB").save(buffer, "JPEG", quality=90)
            data, mimetype = buffer.getvalue(), "image/jpeg"
        bundle = {mimetype: data, "text/plain": f"<{self.caption()}>"}
        size = {"width": self.width, "height": self.height}
        return bundle, {mimetype: size, METADATA_KEY: provenance(self.metadata)}

    def _ipython_display_(self) -> None:
        # IPython would otherwise call both _repr_png_ and _repr_jpeg_: a PNG encode plus a
        # lossy JPEG re-encode of every result in the notebook, instead of the server's bytes.
        from IPython.display import display

        if not self.is_unchanged():
            # Edited in place: show it like any PIL image.
            display(Image.Image._new(self, self.im))  # type: ignore[no-untyped-call]
            return
        bundle, metadata = self.display_bundle(unchanged=True)
        display(bundle, metadata=metadata, raw=True)  # type: ignore[no-untyped-call]

    def __reduce__(self) -> Any:
        # Pickle/copy as a plain PIL image: the subclass adds display behaviour, not state
        # worth carrying.
        return Image.Image._new(self, self.im).__reduce__()


def decode(data: bytes, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode JPEG, PNG, WEBP or GIF bytes, refusing oversized images before decompressing.

    Anything else, and any failure inside the decoder, is a ``DownloadError``.
    """
    if not data:
        raise DownloadError("the result is empty, not an image", status_code=200)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=RESULT_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise DownloadError(
                    f"the result declares {width}×{height} pixels, over the "
                    f"{max_pixels:,}-pixel cap; refused before decoding",
                    status_code=200,
                )
            image.load()
    except DownloadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DownloadError(
            f"the result looks like a decompression bomb; refused before decoding ({exc})",
            status_code=200,
        ) from None
    except Exception as exc:
        # Decoders fed hostile bytes fail in many ways (OSError, SyntaxError, struct.error,
        # IndexError ...): each one means "not a usable image".
        raise DownloadError(
            f"the result is not a decodable image ({_sniff(data)}): {type(exc).__name__}",
            status_code=200,
        ) from None
    return image


def _sniff(data: bytes) -> str:
    """What the bytes look like, in our words: never the server's bytes themselves."""
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml")):
        return "an HTML/XML page"
    if head.startswith((b"{", b"[")):
        return "a JSON document"
    return f"{len(data):,} bytes, not {'/'.join(RESULT_FORMATS)}"


#: Bytes of pixels hashed at a time by ``_digest``.
_DIGEST_BAND_BYTES = 1 << 20


def _digest(image: Image.Image) -> bytes:
    # Band by band: a whole-image tobytes() briefly holds two more copies of the pixels
    # (Pillow joins its encoder's chunks), which tripled peak memory for a 2048×2048 result.
    digest = hashlib.blake2b(digest_size=16)
    width, height = image.size
    rows = max(1, _DIGEST_BAND_BYTES // max(1, width * len(image.getbands())))
    for top in range(0, height, rows):
        digest.update(image.crop((0, top, width, min(top + rows, height))).tobytes())
    return digest.digest() + repr((image.mode, image.size)).encode()
