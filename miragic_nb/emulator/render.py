"""Pillow rendering of the emulator's result images.

Every result is a real JPEG at the requested size. It is a deterministic function of
``(prompt, model, seed, width, height)``: the same inputs give the same bytes, so tests can
compare downloads byte for byte. Each model has its own look, so a person can tell them apart
at a glance:

* ``flux``     -- a landscape: sky gradient, glowing sun, layered hills;
* ``turbo``    -- a retro "synthwave" scene: striped sun over a perspective grid;
* ``gptimage`` -- a flat pastel illustration of overlapping rounded shapes;
* ``kontext``  -- soft bokeh circles (with an input image, see :func:`transform_image`).

The picture also shows the prompt (wrapped), a small "miragic emulator" label, the model, seed
and size. Shapes are drawn on a small canvas and scaled up, and only the text is drawn at full
size, which keeps a 2048x2048 render well under half a second.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import math
import random
import struct
import zlib
from functools import lru_cache

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont, ImageOps

__all__ = ["decompression_bomb", "render_image", "transform_image"]

_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
_RGB = tuple[int, int, int]

# Shapes are drawn on a canvas of at most this many pixels squared, then scaled up.
_CANVAS_MAX = 512
_JPEG_QUALITY = 88
# The largest input image the kontext transform accepts (pixels); larger is refused.
MAX_INPUT_PIXELS = 40_000_000


def render_image(
    prompt: str, model: str, seed: int, width: int, height: int, *, nologo: bool = True
) -> bytes:
    """Render the text-to-image result for one job and return JPEG bytes."""
    rng = random.Random(_digest(prompt, model, seed, width, height))
    scale = min(1.0, _CANVAS_MAX / math.sqrt(width * height))
    cw, ch = max(16, round(width * scale)), max(16, round(height * scale))
    painter = _PAINTERS.get(model, _paint_bokeh)
    # A slight blur before scaling up turns the canvas's hard pixel steps into soft edges.
    canvas = painter(rng, cw, ch).filter(ImageFilter.GaussianBlur(0.6))
    image = canvas.resize((width, height), Image.Resampling.BICUBIC)
    _caption(image, prompt, f"{model} · seed {seed} · {width}x{height}", nologo=nologo)
    return _jpeg(image)


def transform_image(
    source: bytes, prompt: str, model: str, seed: int, width: int, height: int
) -> bytes:
    """Visibly edit an input image (the ``kontext`` image-to-image case) and return JPEG bytes.

    The input is cropped and resized to the requested size, posterised and toned with a
    palette derived from the prompt and seed, and captioned like a generated image.
    Raises ``ValueError`` if the bytes are not a readable image of a sane size.
    """
    try:
        with Image.open(io.BytesIO(source)) as opened:
            if opened.width * opened.height > MAX_INPUT_PIXELS:
                raise ValueError(
                    f"input image is too large ({opened.width}x{opened.height} pixels)"
                )
            opened.draft("RGB", (width, height))
            picture = ImageOps.exif_transpose(opened).convert("RGB")
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"image_url did not return a readable image ({exc})") from exc
    rng = random.Random(_digest(prompt, model, seed, width, height))
    fitted = ImageOps.fit(picture, (width, height), Image.Resampling.BICUBIC)
    hue = rng.random()
    toned = ImageOps.colorize(
        ImageOps.grayscale(fitted), black=_hls(hue, 0.12, 0.7), white=_hls(hue + 0.08, 0.9, 0.6)
    )
    edited = Image.blend(ImageOps.posterize(fitted, 3), toned, 0.55)
    # Opaque boxes: the input's own caption must not show through the new one.
    _caption(
        edited, prompt, f"{model} edit · seed {seed} · {width}x{height}", nologo=True, backdrop=235
    )
    return _jpeg(edited)


def decompression_bomb(width: int = 40_000, height: int = 40_000, fmt: str = "png") -> bytes:
    """Return a small file whose header declares an enormous ``width`` × ``height`` image.

    ``fmt`` is ``"png"`` (a few hundred bytes whose IHDR claims the size) or ``"jpeg"`` (a
    small real JPEG whose SOF header is patched; at most 65535 per side).
    """
    if fmt == "png":
        rows = zlib.compress(b"\x00" + b"\x00" * 3 * min(width, 4096))
        return (
            b"\x89PNG\r\n\x1a\n"
            + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", rows)
            + _png_chunk(b"IEND", b"")
        )
    if fmt == "jpeg":
        if max(width, height) > 0xFFFF:
            raise ValueError("a JPEG header cannot declare more than 65535 pixels per side")
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (40, 40, 40)).save(buffer, "JPEG", quality=50)
        data = bytearray(buffer.getvalue())
        sof = data.find(b"\xff\xc0")
        struct.pack_into(">HH", data, sof + 5, height, width)
        return bytes(data)
    raise ValueError(f"unknown bomb format {fmt!r}; use 'png' or 'jpeg'")


# ---------------------------------------------------------------- painters (small canvas)


def _paint_landscape(rng: random.Random, w: int, h: int) -> Image.Image:
    hue = rng.random()
    image = _gradient(
        w,
        h,
        top=(_hls(hue, 0.35, 0.6), _hls(hue + 0.05, 0.45, 0.6)),
        bottom=(_hls(hue + 0.12, 0.75, 0.8), _hls(hue + 0.15, 0.7, 0.85)),
    )
    glow = Image.new("RGB", (w, h), (0, 0, 0))
    gdraw = ImageDraw.Draw(glow)
    sx, sy, r = rng.uniform(0.2, 0.8) * w, rng.uniform(0.25, 0.5) * h, min(w, h) * 0.09
    gdraw.ellipse((sx - 2.5 * r, sy - 2.5 * r, sx + 2.5 * r, sy + 2.5 * r), fill=(90, 70, 40))
    glow = glow.filter(ImageFilter.GaussianBlur(r))
    image = _screen(image, glow)
    draw = ImageDraw.Draw(image)
    draw.ellipse((sx - r, sy - r, sx + r, sy + r), fill=_hls(hue + 0.1, 0.92, 0.9))
    layers = 3 + rng.randrange(2)
    for i in range(layers):
        base = h * (0.55 + 0.12 * i)
        amp = h * rng.uniform(0.04, 0.1)
        freq = rng.uniform(1.0, 3.0)
        phase = rng.uniform(0, math.tau)
        points = [(0.0, float(h))]
        for x in range(0, w + 8, 8):
            points.append((float(x), base - amp * math.sin(phase + freq * math.tau * x / w)))
        points.append((float(w), float(h)))
        light = 0.45 - 0.1 * i
        draw.polygon(points, fill=_hls(hue + 0.5 + 0.03 * i, max(0.08, light), 0.35))
    return image


def _paint_synthwave(rng: random.Random, w: int, h: int) -> Image.Image:
    hue = rng.choice([0.78, 0.85, 0.9, 0.55, 0.6]) + rng.uniform(-0.03, 0.03)
    horizon = h * rng.uniform(0.55, 0.65)
    image = _gradient(
        w,
        h,
        top=(_hls(hue, 0.08, 0.7), _hls(hue + 0.04, 0.1, 0.7)),
        bottom=(_hls(hue - 0.1, 0.35, 0.9), _hls(hue - 0.12, 0.3, 0.9)),
    )
    draw = ImageDraw.Draw(image)
    cx, r = w * rng.uniform(0.35, 0.65), min(w, h) * rng.uniform(0.18, 0.26)
    cy = horizon - r * 0.35
    sun_top, sun_bottom = _hls(0.14, 0.65, 1.0), _hls(0.95, 0.55, 1.0)
    for y in range(int(cy - r), int(horizon)):
        t = (y - (cy - r)) / (2 * r)
        half = math.sqrt(max(0.0, r * r - (y - cy) ** 2))
        stripe = t > 0.45 and int(t * 28) % 3 == 0
        if not stripe:
            draw.line((cx - half, y, cx + half, y), fill=_mix(sun_top, sun_bottom, t))
    draw.rectangle((0, horizon, w, h), fill=_hls(hue, 0.06, 0.6))
    grid = _hls(hue + 0.05, 0.6, 1.0)
    for i in range(-12, 13):
        draw.line((cx + i * w * 0.04, horizon, cx + i * w * 0.35, h), fill=grid, width=1)
    row, step = horizon, max(2.0, h * 0.012)
    while row < h:
        draw.line((0, row, w, row), fill=grid, width=1)
        row += step
        step *= 1.35
    for _ in range(30 + rng.randrange(30)):
        x, yy = rng.uniform(0, w), rng.uniform(0, horizon * 0.8)
        draw.point((x, yy), fill=(255, 255, 255))
    return image


def _paint_flat(rng: random.Random, w: int, h: int) -> Image.Image:
    hue = rng.random()
    background = _hls(hue, 0.9, 0.5)
    image = Image.new("RGB", (w, h), background)
    shadow = Image.new("L", (w, h), 0)
    shapes: list[tuple[tuple[float, float, float, float], _RGB, bool]] = []
    for _ in range(5 + rng.randrange(4)):
        sw, sh = rng.uniform(0.15, 0.45) * w, rng.uniform(0.15, 0.45) * h
        x, y = rng.uniform(-0.1, 0.9) * w, rng.uniform(-0.1, 0.8) * h
        colour = _hls(hue + rng.choice([0.0, 0.33, 0.5, 0.66]) + rng.uniform(-0.04, 0.04), 0.7, 0.6)
        shapes.append(((x, y, x + sw, y + sh), colour, rng.random() < 0.4))
    sdraw = ImageDraw.Draw(shadow)
    off = min(w, h) * 0.015
    for box, _, round_ in shapes:
        moved = (box[0] + off, box[1] + off, box[2] + off, box[3] + off)
        if round_:
            sdraw.ellipse(moved, fill=70)
        else:
            sdraw.rounded_rectangle(moved, radius=min(w, h) * 0.04, fill=70)
    shadow = shadow.filter(ImageFilter.GaussianBlur(off))
    image.paste((0, 0, 0), mask=shadow)
    draw = ImageDraw.Draw(image)
    for box, colour, round_ in shapes:
        if round_:
            draw.ellipse(box, fill=colour)
        else:
            draw.rounded_rectangle(box, radius=min(w, h) * 0.04, fill=colour)
    return image


def _paint_bokeh(rng: random.Random, w: int, h: int) -> Image.Image:
    hue = rng.random()
    image = _gradient(
        w,
        h,
        top=(_hls(hue, 0.15, 0.5), _hls(hue + 0.1, 0.25, 0.5)),
        bottom=(_hls(hue + 0.2, 0.2, 0.5), _hls(hue - 0.1, 0.12, 0.5)),
    )
    lights = Image.new("RGB", (w, h), (0, 0, 0))
    draw = ImageDraw.Draw(lights)
    for _ in range(25 + rng.randrange(20)):
        r = rng.uniform(0.02, 0.12) * min(w, h)
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        colour = _hls(hue + rng.uniform(-0.15, 0.15), rng.uniform(0.25, 0.5), 0.8)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    lights = lights.filter(ImageFilter.GaussianBlur(min(w, h) * 0.006))
    return _screen(image, lights)


_PAINTERS = {
    "flux": _paint_landscape,
    "turbo": _paint_synthwave,
    "gptimage": _paint_flat,
    "kontext": _paint_bokeh,
}


# ---------------------------------------------------------------- text (full size)


#: More than 6 lines of the widest image hold; the rest of a prompt is never laid out.
_SHOWN_CHARS = 1_000


@lru_cache(maxsize=64)
def _font(size: int) -> _Font:
    return ImageFont.load_default(size=size)


def _caption(
    image: Image.Image, prompt: str, detail: str, *, nologo: bool, backdrop: int = 150
) -> None:
    """Draw the label bar and the prompt box; ``backdrop`` is the prompt box's opacity."""
    width, height = image.size
    short = min(width, height)
    size = max(12, min(72, short // 18))
    small = max(10, size * 3 // 5)
    pad = max(6, size // 2)
    draw = ImageDraw.Draw(image, "RGBA")
    font, label_font = _font(size), _font(small)

    label, white = "miragic emulator", (255, 255, 255, 235)
    detail_w = draw.textlength(detail, font=label_font)
    one_line = detail_w + draw.textlength(label, font=label_font) + pad * 4 < width
    bar_h = small + pad * 2 if one_line else 2 * small + pad * 5 // 2
    draw.rectangle((0, 0, width, bar_h), fill=(0, 0, 0, 110 if backdrop < 200 else backdrop))
    draw.text((pad, pad), label, font=label_font, fill=white)
    if one_line:
        draw.text((width - pad - detail_w, pad), detail, font=label_font, fill=white)
    else:
        draw.text((pad, pad + small + pad // 2), detail, font=label_font, fill=white)

    max_lines = max(2, min(6, (height // 3) // (size + size // 3)))
    # At most 6 lines are drawn: laying out more text (a 200 kB word) only costs time.
    shown = prompt.strip()[:_SHOWN_CHARS]
    lines = _wrap(shown or " ", font, width - 4 * pad, max_lines, draw)
    line_h = size + size // 3
    block_h = line_h * len(lines) + pad * 2
    top = height - block_h - pad
    draw.rounded_rectangle(
        (pad, top, width - pad, height - pad), radius=pad, fill=(0, 0, 0, backdrop)
    )
    for i, line in enumerate(lines):
        draw.text((2 * pad, top + pad + i * line_h), line, font=font, fill=(255, 255, 255, 255))

    if not nologo:
        mark = "MIRAGIC"
        mark_w = draw.textlength(mark, font=font)
        x, y = width - mark_w - 2 * pad, top - line_h - pad
        draw.rounded_rectangle(
            (x - pad, y - pad // 2, x + mark_w + pad, y + line_h),
            radius=pad,
            fill=(255, 255, 255, 90),
        )
        draw.text((x, y), mark, font=font, fill=(20, 20, 20, 220))


def _wrap(
    text: str, font: _Font, max_width: float, max_lines: int, draw: ImageDraw.ImageDraw
) -> list[str]:
    words = text.split()
    lines: list[str] = []
    current = ""
    for word in words:
        candidate = f"{current} {word}".strip()
        if draw.textlength(candidate, font=font) <= max_width:
            current = candidate
            continue
        if current:
            lines.append(current)
        # A single word wider than the line is cut into pieces that fit.
        while draw.textlength(word, font=font) > max_width and len(word) > 1:
            cut = len(word)
            while cut > 1 and draw.textlength(word[:cut], font=font) > max_width:
                cut = max(1, cut * 3 // 4) if cut > 8 else cut - 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and draw.textlength(last + " …", font=font) > max_width:
            last = last[:-1]
        lines = [*lines[: max_lines - 1], last.rstrip() + " …"]
    return lines or [" "]


# ---------------------------------------------------------------- helpers


def _digest(prompt: str, model: str, seed: int, width: int, height: int) -> int:
    key = f"{model}\x00{seed}\x00{width}x{height}\x00{prompt}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big")


def _hls(hue: float, light: float, sat: float) -> _RGB:
    r, g, b = colorsys.hls_to_rgb(hue % 1.0, min(1.0, max(0.0, light)), min(1.0, max(0.0, sat)))
    return round(r * 255), round(g * 255), round(b * 255)


def _mix(a: _RGB, b: _RGB, t: float) -> _RGB:
    t = min(1.0, max(0.0, t))
    return (
        round(a[0] + (b[0] - a[0]) * t),
        round(a[1] + (b[1] - a[1]) * t),
        round(a[2] + (b[2] - a[2]) * t),
    )


def _gradient(w: int, h: int, *, top: tuple[_RGB, _RGB], bottom: tuple[_RGB, _RGB]) -> Image.Image:
    """A smooth four-corner gradient: a 2x2 image scaled up bilinearly."""
    corners = Image.new("RGB", (2, 2))
    corners.putdata([top[0], top[1], bottom[0], bottom[1]])
    return corners.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=None)


def _screen(base: Image.Image, light: Image.Image) -> Image.Image:
    return ImageChops.screen(base, light)


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=_JPEG_QUALITY, optimize=False)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
