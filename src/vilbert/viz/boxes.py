"""A box drawn on an image, labelled (what `vilbert predict --expression` chose)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from vilbert.io.atomic import atomic_path


def boxed(image: Image.Image, box: list[float], label: str) -> Image.Image:
    """A copy of `image` with `box` (pixels x1y1x2y2) outlined in red and `label` above it."""
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(min(canvas.size) / 100))
    draw.rectangle(box, outline=(255, 0, 0), width=width)
    x, y = box[0], max(0.0, box[1] - 12)
    draw.rectangle(draw.textbbox((x, y), label), fill=(255, 0, 0))
    draw.text((x, y), label, fill=(255, 255, 255))
    return canvas


def draw_box(image: str | Path, box: list[float], label: str, out: str | Path) -> Path:
    """Write `image` with `box` outlined and labelled (see `boxed`) to `out` as PNG."""
    with Image.open(image) as img:
        canvas = boxed(img, box, label)
    with atomic_path(out) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(out)
