"""A photo-like JPEG: the emulator's placeholder art compresses far better than real results."""

from __future__ import annotations

import io

from PIL import Image, ImageFilter


def photo_like_jpeg(width: int, height: int, *, quality: int = 90) -> bytes:
    """Gradients under fine grain: about as many bytes per pixel as a detailed photograph."""
    grain = [
        Image.effect_noise((width, height), sigma).filter(ImageFilter.GaussianBlur(0.7))
        for sigma in (48, 56, 64)
    ]
    gradient = Image.linear_gradient("L").resize((width, height))
    channels = [Image.blend(g, gradient, 0.45) for g in grain]
    buffer = io.BytesIO()
    Image.merge("RGB", channels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()
