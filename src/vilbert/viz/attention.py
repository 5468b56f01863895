"""Co-attention between words and regions, read from the model and drawn over the image.

`co_attention_maps` runs one (text, image) pair with `output_attentions=True` and averages the
attention probabilities over heads and over the chosen co-attention layers (all by default):
    text_to_image [T, R]: row t = how word piece t spreads its attention over the regions
                          (R includes the [IMG] row 0; each row sums to 1 over the image's rows);
    image_to_text [R, T]: row r = how region r spreads its attention over the word pieces
                          (each row sums to 1 over the text's tokens, [CLS] and [SEP] included).
For the single-stream baseline the same blocks are cut from its joint self-attention (rows then
sum to less than 1, the rest going to the query's own stream).

`draw_co_attention` writes one PNG: the image with every box; one small panel per word with its
most attended boxes filled in proportion to the word's attention on them; and, for the regions
that draw the most attention, bars of the word weights they attend to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from vilbert.core.regions import ImageRegions
from vilbert.core.runtime import evaluating, model_device
from vilbert.data.inputs import pair_inputs
from vilbert.data.tokenizer import load_tokenizer
from vilbert.io.atomic import save_png


@dataclass
class AttentionMaps:
    tokens: list[str]  # [T] word pieces, [CLS] and [SEP] included
    boxes: np.ndarray  # [R-1, 4] pixel x1y1x2y2 of the real regions (row r of the maps is boxes[r-1])
    text_to_image: np.ndarray  # [T, R] averaged over heads and layers
    image_to_text: np.ndarray  # [R, T]
    layers: list[int]  # co-attention layers averaged

    def word_rows(self) -> list[int]:
        """Rows of real words (not [CLS], [SEP], [PAD])."""
        return [i for i, t in enumerate(self.tokens) if t not in ("[CLS]", "[SEP]", "[PAD]")]


def co_attention_maps(model: torch.nn.Module, text: str, regions: ImageRegions, max_text_length: int = 36,
                      max_regions: int = 36, layers: Sequence[int] | None = None) -> AttentionMaps:
    """Attention of one (text, regions) pair, averaged over heads and `layers` (default all)."""
    tokenizer = load_tokenizer()
    inputs = pair_inputs(tokenizer, text, regions, max_text_length, max_regions, model_device(model))
    ids = inputs["input_ids"][0].tolist()
    with evaluating(model):
        out = model(**inputs, output_attentions=True)
    pairs = out.co_attentions or []
    if not pairs:
        raise ValueError("the model returned no co-attention (it has no co-attention layers)")
    chosen = list(range(len(pairs))) if layers is None else list(layers)
    bad = [k for k in chosen if not 0 <= k < len(pairs)]
    if bad:
        raise ValueError(f"co-attention layer(s) {bad} do not exist; the model has {len(pairs)} (0..{len(pairs) - 1})")
    # Each pair: text->image [1,H,T,R], image->text [1,H,R,T]; mean over heads, then over layers.
    t2i = torch.stack([pairs[k][0][0].float().mean(0) for k in chosen]).mean(0)  # [T,R]
    i2t = torch.stack([pairs[k][1][0].float().mean(0) for k in chosen]).mean(0)  # [R,T]
    n = min(len(regions.boxes), max_regions)
    return AttentionMaps(tokenizer.convert_ids_to_tokens(ids), np.asarray(regions.boxes[:n], dtype=np.float32),
                         t2i.cpu().numpy(), i2t.cpu().numpy(), chosen)


def top_regions(maps: AttentionMaps, k: int) -> list[int]:
    """The `k` real regions (map rows >= 1) that the words attend to most, summed over words."""
    words = maps.word_rows() or list(range(len(maps.tokens)))
    received = maps.text_to_image[words][:, 1:].sum(0)
    return [int(r) + 1 for r in np.argsort(-received, kind="stable")[:k]]


def draw_co_attention(image_path: str | Path | Image.Image, maps: AttentionMaps, out: str | Path, top_k: int = 4,
                      title: str | None = None, per_word: int = 3) -> Path:
    """Write the PNG described in the module docstring; returns its path."""
    return save_png(co_attention_figure(image_path, maps, top_k, title, per_word), out, dpi=90)


def co_attention_figure(image_path: str | Path | Image.Image, maps: AttentionMaps, top_k: int = 4,
                        title: str | None = None, per_word: int = 3) -> Figure:
    """The figure of `draw_co_attention` (for a caller that renders it elsewhere, e.g. a web page)."""
    if isinstance(image_path, Image.Image):
        image = np.asarray(image_path.convert("RGB"))
    else:
        with Image.open(image_path) as img:
            image = np.asarray(img.convert("RGB"))
    words = maps.word_rows() or list(range(len(maps.tokens)))
    regions = top_regions(maps, top_k)
    cols = min(6, max(1, len(words)))
    word_rows = -(-len(words) // cols)
    fig = Figure(figsize=(3 * max(cols, 3), 3.2 + 2.6 * word_rows + 2.2))
    grid = fig.add_gridspec(2 + word_rows, max(cols, len(regions), 1),
                            height_ratios=[1.4] + [1.0] * word_rows + [0.9])
    # The image with every box; the top regions numbered.
    ax = fig.add_subplot(grid[0, :])
    ax.imshow(image)
    for r, box in enumerate(maps.boxes, start=1):
        colour = "red" if r in regions else "white"
        ax.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, edgecolor=colour,
                               linewidth=1.5 if r in regions else 0.5, alpha=1.0 if r in regions else 0.5))
        if r in regions:
            ax.text(box[0] + 2, box[1] + 10, f"#{r}", color="red", fontsize=8, weight="bold")
    ax.set_title(title or "boxes (red: regions the words attend to most)", fontsize=10)
    ax.axis("off")
    # One panel per word: its `per_word` most attended regions, fill alpha = weight / the largest.
    for j, t in enumerate(words):
        ax = fig.add_subplot(grid[1 + j // cols, j % cols])
        ax.imshow(image)
        weights = maps.text_to_image[t, 1:]  # real regions
        top = float(weights.max()) if weights.size else 0.0
        for r in np.argsort(-weights, kind="stable")[:per_word]:
            box, a = maps.boxes[r], (0.0 if top <= 0 else 0.6 * float(weights[r]) / top)
            ax.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], facecolor="yellow",
                                   edgecolor="orange", alpha=a, linewidth=1.0))
        ax.set_title(f"{maps.tokens[t]!s}: max {top:.2f}, [IMG] {maps.text_to_image[t, 0]:.2f}", fontsize=8)
        ax.axis("off")
    # Word weights of the top regions.
    for j, r in enumerate(regions):
        ax = fig.add_subplot(grid[1 + word_rows, j])
        ax.bar(range(len(maps.tokens)), maps.image_to_text[r], color="tab:blue")
        ax.set_xticks(range(len(maps.tokens)))
        ax.set_xticklabels(maps.tokens, rotation=70, fontsize=7)
        ax.set_title(f"region #{r} -> words", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    layers = ", ".join(str(k) for k in maps.layers)
    fig.suptitle(f"co-attention averaged over heads and layers {layers}", fontsize=10)
    fig.tight_layout()
    return fig
