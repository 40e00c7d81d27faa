"""Validation of the create call's form fields, with the messages the emulator answers.

The rules are those of ``docs/api-contract.md``: ``prompt`` non-empty; ``model`` one of the
four names; ``width``/``height`` integers in 256-2048; ``image_url`` only with ``kontext`` and
only ``http(s)``; undocumented ``seed`` a non-negative integer; ``enhance``/``safe``/
``private``/``nologo`` ``'true'`` or ``'false'`` (any case).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["MODELS", "CreateParams", "ValidationError", "validate_create"]

MODELS = ("flux", "turbo", "gptimage", "kontext")
MIN_SIDE, MAX_SIDE = 256, 2048
FLAGS = ("enhance", "safe", "private", "nologo")
# Server-side defaults, as the reference's example record shows them.
FLAG_DEFAULTS = {"safe": "false", "nologo": "true", "enhance": "false", "private": "false"}
_DIGITS = re.compile(r"[0-9]+")


class ValidationError(ValueError):
    """A create request the server refuses with 400; ``str()`` is the message sent."""


@dataclass(frozen=True)
class CreateParams:
    prompt: str
    model: str
    width: int
    height: int
    image_url: str
    seed: int | None
    flags: dict[str, str]

    def parameters(self) -> dict[str, str]:
        """The job record's ``parameters``: every value a string, keys in the reference's order."""
        return {
            "safe": self.flags["safe"],
            "seed": "" if self.seed is None else str(self.seed),
            "model": self.model,
            "width": str(self.width),
            "height": str(self.height),
            "nologo": self.flags["nologo"],
            "prompt": self.prompt,
            "enhance": self.flags["enhance"],
            "private": self.flags["private"],
            "image_url": self.image_url,
            "uploaded_image_path": "",
        }


def _side(form: Mapping[str, str], name: str) -> int:
    raw = form.get(name)
    if raw is None or not raw.strip():
        raise ValidationError(f"{name} is required")
    value = raw.strip()
    if not _DIGITS.fullmatch(value) or not MIN_SIDE <= int(value) <= MAX_SIDE:
        raise ValidationError(
            f"{name} must be an integer between {MIN_SIDE} and {MAX_SIDE}, got {raw!r}"
        )
    return int(value)


def validate_create(form: Mapping[str, str]) -> CreateParams:
    """Check a create request's fields; raise :class:`ValidationError` with the 400 message."""
    prompt = form.get("prompt", "")
    if not prompt.strip():
        raise ValidationError("prompt is required")
    model = form.get("model", "").strip()
    if not model:
        raise ValidationError("model is required")
    if model not in MODELS:
        raise ValidationError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    width, height = _side(form, "width"), _side(form, "height")

    image_url = form.get("image_url", "").strip()
    if image_url:
        if model != "kontext":
            raise ValidationError(
                f"image_url is only available when model is 'kontext' (got model {model!r})"
            )
        parts = urlsplit(image_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValidationError(f"image_url must be an http(s) URL, got {image_url!r}")

    seed: int | None = None
    raw_seed = form.get("seed", "").strip()
    if raw_seed:
        if not _DIGITS.fullmatch(raw_seed):
            raise ValidationError(f"seed must be a non-negative integer, got {raw_seed!r}")
        seed = int(raw_seed)

    flags = dict(FLAG_DEFAULTS)
    for name in FLAGS:
        raw = form.get(name)
        if raw is None or raw == "":
            continue
        value = raw.strip().lower()
        if value not in ("true", "false"):
            raise ValidationError(f"{name} must be 'true' or 'false', got {raw!r}")
        flags[name] = value
    return CreateParams(prompt, model, width, height, image_url, seed, flags)
