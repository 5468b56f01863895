"""Images side by side with a caption each: what `vilbert search --draw` shows."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from vilbert.io.atomic import atomic_path

LABEL_HEIGHT = 28  # two lines of PIL's default font under each image


def draw_image_grid(images: Sequence[str | Path], labels: Sequence[str], title: str, out: str | Path,
                    columns: int = 5, tile: int = 160) -> Path:
    """Write a PNG of `images` as `tile`-pixel thumbnails in rows of `columns`, each with its label
    (up to two lines) under it and `title` on top."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)  # ceiling
    header = 20
    canvas = Image.new("RGB", (columns * tile, header + rows * (tile + LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill=(0, 0, 0))
    for k, (path, label) in enumerate(zip(images, labels)):
        with Image.open(path) as img:
            thumb = img.convert("RGB")
        thumb.thumbnail((tile - 4, tile - 4))
        x, y = (k % columns) * tile, header + (k // columns) * (tile + LABEL_HEIGHT)
        canvas.paste(thumb, (x + (tile - thumb.width) // 2, y + (tile - thumb.height) // 2))
        draw.multiline_text((x + 4, y + tile), label, fill=(0, 0, 0), spacing=2)
    with atomic_path(out) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(out)
