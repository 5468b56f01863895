"""The co-attention between one sentence and one image, drawn: `explain(ExplainRun(...))`, which
`vilbert explain` calls. Regions as in `vilbert.pipelines.predict`; the attention is averaged
over heads and over every co-attention layer, or over the chosen layers only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vilbert.io.atomic import write_json
from vilbert.model import load_pretrained
from vilbert.pipelines.predict import MAX_REGIONS, DetectorChoice, check_regions_fit, image_regions
from vilbert.viz.attention import co_attention_maps, draw_co_attention, top_regions

MAX_TEXT_LENGTH = 36


@dataclass
class ExplainRun:
    checkpoint: str | Path  # a saved model directory
    image: str | Path
    text: str  # a caption, question or expression
    out: str | Path  # the PNG to write
    boxes: str | Path | None = None
    features: str | Path | None = None  # a feature store whose extraction settings to reuse
    image_size: int | None = None
    layers: tuple[int, ...] | None = None  # co-attention layers to average (None: all)
    top: int = 4  # regions whose word weights are drawn
    max_regions: int = MAX_REGIONS
    max_text_length: int = MAX_TEXT_LENGTH
    json_out: str | Path | None = None  # also write the averaged maps as JSON here
    detector: str | None = None  # a released detector (bottom-up-r101, x152-fpn) and its weights file
    detector_weights: str | Path | None = None
    detector_config: str | Path | dict | None = None
    device: str = "auto"


def explain(run: ExplainRun) -> dict[str, Any]:
    """Draw the maps at `run.out`; returns {"out", "tokens", "layers", "top_regions"}."""
    checkpoint = Path(run.checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint} is not a saved model directory (no config.json)")
    model = load_pretrained(checkpoint)
    detector = DetectorChoice(run.detector, run.detector_weights, run.detector_config) if run.detector else None
    regions = image_regions(run.image, run.boxes, run.features, run.image_size, detector, run.device)
    check_regions_fit(model, regions, run.image)
    layers = None if run.layers is None else list(run.layers)
    maps = co_attention_maps(model, run.text, regions, run.max_text_length, run.max_regions, layers)
    out = draw_co_attention(run.image, maps, run.out, top_k=run.top, title=f'"{run.text}"')
    summary = {"out": str(out), "tokens": maps.tokens, "layers": maps.layers,
               "top_regions": [{"region": r, "box": maps.boxes[r - 1].tolist()} for r in top_regions(maps, run.top)]}
    if run.json_out:
        write_json(run.json_out, {**summary, "text_to_image": maps.text_to_image.tolist(),
                                  "image_to_text": maps.image_to_text.tolist()})
    return summary
