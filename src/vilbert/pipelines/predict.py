"""One image, one question or expression, one saved model: `predict(PredictRun(...))`, which
`vilbert predict` calls.

Regions come from a released checkpoint's detector (`bottom-up-r101`, `x152-fpn` with its weights
file: the features a converted checkpoint expects), or from a COCO-style boxes file (the image's
entry found by file name) or, without one, the features module's multi-scale grid. Given a feature
store, its extractor and settings are used (a detector store names its detector and weights), so
the image's features are computed as the model's training features were. A question needs a "vqa"
head; an expression a "region_score" head (a model fine-tuned on referring expressions).
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vilbert.core.regions import ImageRegions
from vilbert.core.runtime import evaluating, model_device, resolve_device
from vilbert.data.inputs import pair_inputs
from vilbert.data.tokenizer import load_tokenizer
from vilbert.detect import load_detector
from vilbert.features.boxes import ImageEntry, read_coco_boxes
from vilbert.features.detected import extract_detected
from vilbert.features.extract import ExtractConfig, extract_features
from vilbert.features.store import FeatureStore
from vilbert.model import ViLBert, load_pretrained
from vilbert.tasks import recipe
from vilbert.tasks.refer import HEAD as REGION_HEAD
from vilbert.tasks.vqa import HEAD as VQA_HEAD
from vilbert.tasks.vqa import head_answers, top_answers
from vilbert.viz.boxes import draw_box

MAX_REGIONS = 36  # real regions per image, as the paper's features


@dataclass
class PredictRun:
    checkpoint: str | Path  # a saved model directory
    image: str | Path
    question: str | None = None  # exactly one of question and expression
    expression: str | None = None
    out: str | Path | None = None  # PNG with the chosen box (expression mode)
    top: int = 5  # answers to return (question mode)
    boxes: str | Path | None = None  # COCO-style boxes file
    features: str | Path | None = None  # a feature store whose extraction settings to reuse
    image_size: int | None = None  # extraction canvas (default: the store's, or ExtractConfig's)
    max_regions: int = MAX_REGIONS
    max_text_length: int | None = None  # default: the task recipe's
    detector: str | None = None  # a released detector (bottom-up-r101, x152-fpn) ...
    detector_weights: str | Path | None = None  # ... and its weights file
    detector_config: str | Path | dict[str, Any] | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.detector is not None and self.detector_weights is None:
            raise ValueError(f"the {self.detector} detector needs its weights file (--detector-weights)")
        if (self.question is None) == (self.expression is None):
            raise ValueError("give exactly one of a question and an expression")
        if self.expression is not None and self.out is None:
            raise ValueError("an expression needs an output PNG for the drawn box (--out)")


def extract_config(features: str | Path | None, image_size: int | None) -> ExtractConfig:
    """ExtractConfig matching `features`' stored settings (when given), then `image_size`."""
    values: dict[str, Any] = {}
    if features is not None:
        stored = (FeatureStore(features).meta or {}).get("extract", {})
        known = {f.name for f in dataclasses.fields(ExtractConfig)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in stored.items() if k in known}
    if image_size is not None:
        values["image_size"] = image_size
    return ExtractConfig(**values, batch_size=1)


def image_entry(image: Path, boxes: str | Path | None) -> tuple[ImageEntry, str]:
    """The image with its boxes from `boxes` (matched by file name), or with none (grid)."""
    if not image.is_file():
        raise FileNotFoundError(f"image {image} does not exist")
    if boxes is None:
        return ImageEntry(image.stem, image), "grid"
    matches = [e for e in read_coco_boxes(boxes, image.parent) if e.path.name == image.name]
    if not matches:
        raise ValueError(f"{boxes} lists no image with file name {image.name!r}")
    return matches[0], "coco"


@dataclass(frozen=True)
class DetectorChoice:
    """A released detector and its weights, for one image's regions."""

    name: str
    weights: str | Path
    config: str | Path | dict[str, Any] | None = None


def detector_of_store(features: str | Path | None) -> DetectorChoice | None:
    """The detector a feature store was extracted with, as its metadata records it (or None)."""
    if features is None:
        return None
    meta = FeatureStore(features).meta
    if not meta.get("detector"):
        return None
    if not Path(meta["weights"]).is_file():
        raise FileNotFoundError(f"{features} was extracted with {meta['detector']} weights {meta['weights']}, which "
                                "are not there any more; pass --detector and --detector-weights")
    return DetectorChoice(meta["detector"], meta["weights"], meta.get("detector_config"))


def image_regions(image: str | Path, boxes: str | Path | None = None, features: str | Path | None = None,
                  image_size: int | None = None, detector: DetectorChoice | None = None,
                  device: str = "auto") -> ImageRegions:
    """Regions of one image, through the same extraction code as a feature store (the store's
    own extractor when `features` is given and no detector is)."""
    entry, source = image_entry(Path(image), boxes)
    detector = detector or detector_of_store(features)
    with tempfile.TemporaryDirectory(prefix="vilbert-predict-") as tmp:
        if detector is not None:
            loaded = load_detector(detector.name, detector.weights, detector.config, resolve_device(device))
            report = extract_detected([entry], Path(tmp) / "store", loaded, given_boxes=boxes is not None,
                                      progress=False)
        else:
            report = extract_features([entry], Path(tmp) / "store", extract_config(features, image_size),
                                      boxes_source=source, progress=False)
        if report.failed:
            raise ValueError(f"could not extract features from {image} (see the message above)")
        store = FeatureStore(Path(tmp) / "store")
        try:
            return store[entry.image_id]
        finally:
            store.close()


def check_regions_fit(model: ViLBert, regions: ImageRegions, image: str | Path) -> None:
    if regions.features.shape[1] != model.config.v_feature_size:
        hint = (" (a converted checkpoint expects its detector's 2048-d features: --detector bottom-up-r101 or "
                "x152-fpn with --detector-weights)" if model.config.v_feature_size == 2048 else "")
        raise ValueError(f"extracted {regions.features.shape[1]}-d features from {image} but the model "
                         f"expects {model.config.v_feature_size}{hint}")


def head_logits(model: ViLBert, text: str, regions: ImageRegions, max_text_length: int, max_regions: int,
                head: str) -> torch.Tensor:
    """One (text, image) row through the model -> the head's logits for that row."""
    if head not in model.heads:
        raise ValueError(f"the checkpoint has no {head!r} head (its heads: {', '.join(model.heads) or 'none'})")
    inputs = pair_inputs(load_tokenizer(), text, regions, max_text_length, max_regions, model_device(model))
    with evaluating(model):
        out = model(**inputs, heads=(head,))
    return out.logits[head][0].float().cpu()


def answer(model: ViLBert, question: str, regions: ImageRegions, top: int = 5, max_text_length: int | None = None,
           max_regions: int = MAX_REGIONS) -> list[tuple[str, float]]:
    """The `top` answers of the model's VQA head, with their scores."""
    length = max_text_length or recipe("vqa").max_text_length
    logits = head_logits(model, question, regions, length, max_regions, VQA_HEAD)  # [A]
    return top_answers(logits[None], head_answers(model), top)[0]


def ground(model: ViLBert, expression: str, regions: ImageRegions, max_text_length: int | None = None,
           max_regions: int = MAX_REGIONS) -> dict[str, Any]:
    """The best-scoring real region (row 0, [IMG], is not a proposal) with its logit and softmax share."""
    length = max_text_length or recipe("refer").max_text_length
    logits = head_logits(model, expression, regions, length, max_regions, REGION_HEAD)  # [R]
    n = min(regions.num_boxes, max_regions)
    real = logits[1 : n + 1]  # [N]
    best = int(real.argmax())
    share = float(torch.softmax(real, dim=0)[best])
    return {"box": [float(v) for v in regions.boxes[best]], "region": best, "logit": float(real[best]), "score": share}


def predict(run: PredictRun) -> dict[str, Any]:
    """{"question", "answers": [{"answer", "score"}]} or {"expression", "box", "region", "logit",
    "score", "out"} (the box drawn on the image at `out`)."""
    model = load_pretrained(run.checkpoint, map_location=resolve_device(run.device))
    detector = DetectorChoice(run.detector, run.detector_weights, run.detector_config) if run.detector else None
    regions = image_regions(run.image, run.boxes, run.features, run.image_size, detector, run.device)
    check_regions_fit(model, regions, run.image)
    if run.question is not None:
        answers = answer(model, run.question, regions, run.top, run.max_text_length, run.max_regions)
        return {"question": run.question, "answers": [{"answer": a, "score": s} for a, s in answers]}
    found = ground(model, run.expression, regions, run.max_text_length, run.max_regions)
    draw_box(run.image, found["box"], f"{run.expression}: {found['score']:.2f}", run.out)
    return {"expression": run.expression, **found, "out": str(run.out)}
