"""A generation request: checked completely before anything is sent, then turned into form fields.

Validation lives here, in one place, so the client, the magic and the panel refuse the same
inputs with the same messages, and a refused request costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, TypedDict
from urllib.parse import urlsplit

from miragic_nb._core.errors import InvalidRequestError

if TYPE_CHECKING:
    import os

    from PIL import Image

    from miragic_nb._core.jobs import Job

#: The models the API accepts, with what each is for.
MODELS: Mapping[str, str] = {
    "flux": "high-quality text-to-image; the API's default choice",
    "turbo": "fast drafts: lower latency, good for iterating on a prompt",
    "gptimage": "strong prompt following and legible text inside images",
    "kontext": "image-to-image: edits or restyles the picture at --image-url",
}
#: Models that accept an input image (``image_url``).
IMAGE_INPUT_MODELS = frozenset({"kontext"})
MIN_SIDE = 256
#: Largest seed the client chooses itself (31 bits: every server's integer type holds it).
MAX_SEED = 2**31 - 1
MAX_SIDE = 2048
#: What ``image_url=`` accepts (a ``GeneratedImage`` is a PIL image); the engine makes it a URL.
ImageInput: TypeAlias = (
    "str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image | Job | None"
)
#: Longest prompt sent. The job record echoes the prompt twice (``prompt`` and
#: ``parameters.prompt``) and an answer may be at most 1 MiB; JSON can spell one character in
#: up to 12 bytes (an escaped surrogate pair), so 20,000 characters always leave room to read
#: the job back. A longer prompt would be paid for and never readable.
MAX_PROMPT_CHARS = 20_000
#: Longest ``image_url`` sent: echoed in the record too; signed URLs are a few kB.
MAX_URL_CHARS = 16_384
#: Optional switches the API records; sent only when set explicitly (api-contract D3).
FLAGS = ("enhance", "safe", "private", "nologo")


class RequestOptions(TypedDict, total=False):
    """The options of a request besides its prompt, as keyword arguments (``generate``)."""

    model: str
    width: int
    height: int
    #: A URL, or what ``image_inputs`` turns into one (a result, a job, a file...).
    image_url: ImageInput
    seed: int | None
    enhance: bool | None
    safe: bool | None
    private: bool | None
    nologo: bool | None


@dataclass(frozen=True)
class GenerationRequest:
    """Everything one image generation needs; invalid values raise ``InvalidRequestError``."""

    prompt: str
    model: str = "flux"
    width: int = 1024
    height: int = 1024
    image_url: str | None = None
    seed: int | None = None
    enhance: bool | None = None
    safe: bool | None = None
    private: bool | None = None
    nologo: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InvalidRequestError("prompt must be a non-empty string", field="prompt")
        _check_text("prompt", self.prompt)
        object.__setattr__(self, "prompt", self.prompt.strip())
        _check_length("prompt", self.prompt, MAX_PROMPT_CHARS)
        if not isinstance(self.model, str) or self.model.strip().lower() not in MODELS:
            raise InvalidRequestError(
                f"unknown model {self.model!r}; choose one of: {', '.join(MODELS)}",
                field="model",
            )
        object.__setattr__(self, "model", self.model.strip().lower())
        for side in ("width", "height"):
            object.__setattr__(self, side, _check_side(side, getattr(self, side)))
        if self.image_url is not None:
            _check_image_url(self.image_url, self.model)
        if self.seed is not None:
            object.__setattr__(self, "seed", _check_seed(self.seed))
        for flag in FLAGS:
            value = getattr(self, flag)
            if value is not None and not isinstance(value, bool):
                raise InvalidRequestError(
                    f"{flag} must be True, False or None (server default), got {value!r}",
                    field=flag,
                )

    def form_fields(self) -> dict[str, str]:
        """The fields of the create call, as the strings the API records."""
        fields = {
            "prompt": self.prompt,
            "model": self.model,
            "width": str(self.width),
            "height": str(self.height),
        }
        if self.image_url is not None:
            fields["image_url"] = self.image_url
        if self.seed is not None:
            fields["seed"] = str(self.seed)
        for flag in FLAGS:
            value = getattr(self, flag)
            if value is not None:
                fields[flag] = "true" if value else "false"
        return fields

    def describe(self) -> dict[str, Any]:
        """How the image is made, as recorded in results and history: the parameters, with
        the optional switches grouped under ``options``."""
        return {
            "prompt": self.prompt,
            "model": self.model,
            "width": self.width,
            "height": self.height,
            "seed": self.seed,
            "image_url": self.image_url,
            "options": {flag: getattr(self, flag) for flag in FLAGS},
        }


def parse_decimal(text: str) -> int | None:
    """The integer written in ASCII digits (surrounding spaces allowed), else None.

    Not ``str.isdigit``: it also accepts '²' and other digits that ``int`` refuses.
    """
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None


def _check_text(name: str, text: str) -> None:
    """Refuse text that cannot be sent: a lone surrogate (half of an emoji, from a bad decode)
    has no UTF-8 form, so encoding the form would fail half-way."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(
            f"{name} has a lone surrogate ({text[exc.start]!r} at position {exc.start}), "
            "which is not text that can be sent; remove it or decode the text properly",
            field=name,
        ) from None


def _check_length(name: str, text: str, limit: int) -> None:
    """Refuse text the job record could not echo back in an answer the client can read."""
    if len(text) > limit:
        raise InvalidRequestError(
            f"{name} is {len(text):,} characters; at most {limit:,} can be sent (the job's "
            "status answer repeats it, and a longer one could not be read back)",
            field=name,
        )


def _check_side(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and parse_decimal(value) is not None:
            value = parse_decimal(value)
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InvalidRequestError(
                f"{name} must be an integer from {MIN_SIDE} to {MAX_SIDE}, got {value!r}",
                field=name,
            )
    assert isinstance(value, int)
    if not MIN_SIDE <= value <= MAX_SIDE:
        raise InvalidRequestError(
            f"{name} must be from {MIN_SIDE} to {MAX_SIDE} pixels, got {value}", field=name
        )
    return value


def _check_image_url(url: object, model: str) -> None:
    if model not in IMAGE_INPUT_MODELS:
        raise InvalidRequestError(
            f"image_url works only with model 'kontext' (image-to-image), not {model!r}; "
            "use model='kontext' or drop image_url",
            field="image_url",
        )
    if isinstance(url, str):
        _check_text("image_url", url)
        _check_length("image_url", url, MAX_URL_CHARS)
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequestError(
            f"image_url must be an http(s) URL, got {url!r}", field="image_url"
        )


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        parsed = parse_decimal(seed) if isinstance(seed, str) else None
        if parsed is not None:
            return parsed
        raise InvalidRequestError(
            f"seed must be a non-negative integer, got {seed!r}", field="seed"
        )
    if seed < 0:
        raise InvalidRequestError(f"seed must be a non-negative integer, got {seed}", field="seed")
    return seed


def request_from(prompt: str | GenerationRequest, options: RequestOptions) -> GenerationRequest:
    """The request ``prompt`` and ``options`` describe, validated before anything is sent."""
    if isinstance(prompt, GenerationRequest):
        if options:
            raise InvalidRequestError(
                f"options ({', '.join(sorted(options))}) cannot be combined with a ready "
                "GenerationRequest; put them in the request",
                field=next(iter(sorted(options))),
            )
        return prompt
    allowed = GenerationRequest.__dataclass_fields__.keys() - {"prompt"}
    unknown = sorted(options.keys() - allowed)
    if unknown:
        raise InvalidRequestError(
            f"unknown option {unknown[0]!r}; the options are {', '.join(sorted(allowed))}, "
            "timeout, on_progress and reuse",
            field=unknown[0],
        )
    # image_url is a URL by now (the caller resolved what the user held); anything else
    # is refused by GenerationRequest's own check.
    return GenerationRequest(prompt, **options)  # type: ignore[arg-type]


def random_seed() -> int:
    """A seed for a request that gave none: sent and shown, so the picture can be made again."""
    import secrets

    return secrets.randbelow(MAX_SEED + 1)
