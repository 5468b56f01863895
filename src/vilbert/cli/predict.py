"""`vilbert predict`: answer a question about one image, or find the region an expression names.

    vilbert predict --checkpoint RUN/model --image photo.png --question "what colour is the cube?"
    vilbert predict --checkpoint RUN/model --image photo.png --expression "the red cube" --out box.png

Regions come from `--boxes` (a COCO-style file such as a world's proposals.json, filtered to this
image by file name) or, without it, the multi-scale grid of the features module. Features are
extracted on the fly with the same code (and, given `--features STORE`, the same settings) as the
store the model was trained on. Question mode needs a "vqa" head; expression mode a
"region_score" head (a model fine-tuned on referring expressions).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from vilbert.features.store import ImageRegions


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vilbert predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a saved model directory")
    p.add_argument("--image", required=True, help="the image file")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--question", help="a question: prints the top answers with their scores")
    what.add_argument("--expression", help="a referring expression: draws the chosen box on the image")
    p.add_argument("--top", type=int, default=5, help="answers to print (question mode)")
    p.add_argument("--out", default=None, help="PNG to write the chosen box on (expression mode)")
    p.add_argument("--boxes", default=None, help="COCO-style boxes JSON; the image's entry is found by file name")
    p.add_argument("--features", default=None,
                   help="a feature store whose extraction settings (backbone, image size) to reuse")
    p.add_argument("--image-size", type=int, default=None, help="extraction canvas (default: the store's, or 384)")
    p.add_argument("--max-regions", type=int, default=36)
    p.add_argument("--max-text-length", type=int, default=None, help="default: the task recipe's")
    p.add_argument("--device", default="auto")
    return p


# -- regions -----------------------------------------------------------------------------------


def extract_config(features: str | None, image_size: int | None):
    """ExtractConfig matching `features`' stored settings (when given), then --image-size."""
    from vilbert.features.extract import ExtractConfig

    values: dict[str, Any] = {}
    if features is not None:
        from vilbert.features.store import FeatureStore

        stored = (FeatureStore(features).meta or {}).get("extract", {})
        known = {f.name for f in dataclasses.fields(ExtractConfig)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in stored.items() if k in known}
    if image_size is not None:
        values["image_size"] = image_size
    return ExtractConfig(**values, batch_size=1)


def image_entry(image: Path, boxes: str | None):
    """The image with its boxes from `boxes` (matched by file name), or with none (grid)."""
    from vilbert.features.boxes import ImageEntry, read_coco_boxes

    if not image.is_file():
        raise FileNotFoundError(f"image {image} does not exist")
    if boxes is None:
        return ImageEntry(image.stem, image), "grid"
    matches = [e for e in read_coco_boxes(boxes, image.parent) if e.path.name == image.name]
    if not matches:
        raise ValueError(f"{boxes} lists no image with file name {image.name!r}")
    return matches[0], "coco"


def extract_regions(image: Path, boxes: str | None, features: str | None, image_size: int | None) -> ImageRegions:
    """Regions of one image, through the same extraction code as a feature store."""
    from vilbert.features.extract import extract_features
    from vilbert.features.store import FeatureStore

    entry, source = image_entry(image, boxes)
    config = extract_config(features, image_size)
    with tempfile.TemporaryDirectory(prefix="vilbert-predict-") as tmp:
        report = extract_features([entry], Path(tmp) / "store", config, boxes_source=source, progress=False)
        if report.failed:
            raise ValueError(f"could not extract features from {image} (see the message above)")
        store = FeatureStore(Path(tmp) / "store")
        try:
            return store[entry.image_id]
        finally:
            store.close()


# -- model ---------------------------------------------------------------------------------------


def forward(model, text: str, regions: ImageRegions, max_text_length: int, max_regions: int, head: str) -> torch.Tensor:
    """One (text, image) row through the model -> the head's logits for that row."""
    from vilbert.tasks.common import evaluating, model_device, single_pair_inputs

    if head not in model.heads:
        raise ValueError(f"the checkpoint has no {head!r} head (its heads: {', '.join(model.heads) or 'none'})")
    inputs = single_pair_inputs(text, regions, max_text_length, max_regions, model_device(model))
    with evaluating(model):
        out = model(**inputs, heads=(head,))
    return out.logits[head][0].float().cpu()


def answer(model, question: str, regions: ImageRegions, args: argparse.Namespace) -> list[tuple[str, float]]:
    from vilbert.tasks.builder import recipe
    from vilbert.tasks.vqa import HEAD, head_answers, top_answers

    length = args.max_text_length or recipe("vqa").max_text_length
    logits = forward(model, question, regions, length, args.max_regions, HEAD)  # [A]
    return top_answers(logits[None], head_answers(model), args.top)[0]


def ground(model, expression: str, regions: ImageRegions, args: argparse.Namespace) -> dict[str, Any]:
    """The best-scoring real region (row 0, [IMG], is not a proposal) with its logit and softmax share."""
    from vilbert.tasks.builder import recipe

    length = args.max_text_length or recipe("refer").max_text_length
    logits = forward(model, expression, regions, length, args.max_regions, "region_score")  # [R]
    n = min(regions.num_boxes, args.max_regions)
    real = logits[1 : n + 1]  # [N]
    best = int(real.argmax())
    share = float(torch.softmax(real, dim=0)[best])
    return {"box": [float(v) for v in regions.boxes[best]], "region": best, "logit": float(real[best]), "score": share}


def draw_box(image: Path, box: list[float], label: str, out: Path) -> None:
    from PIL import Image, ImageDraw

    with Image.open(image) as img:
        canvas = img.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(min(canvas.size) / 100))
    draw.rectangle(box, outline=(255, 0, 0), width=width)
    x, y = box[0], max(0.0, box[1] - 12)
    draw.rectangle(draw.textbbox((x, y), label), fill=(255, 0, 0))
    draw.text((x, y), label, fill=(255, 255, 255))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from vilbert.model import load_pretrained
    from vilbert.train.distributed import resolve_device

    if args.expression is not None and args.out is None:
        raise ValueError("--expression needs --out PNG for the drawn box")
    model = load_pretrained(args.checkpoint, map_location=resolve_device(args.device))
    image = Path(args.image)
    regions = extract_regions(image, args.boxes, args.features, args.image_size)
    if regions.features.shape[1] != model.config.v_feature_size:
        raise ValueError(f"extracted {regions.features.shape[1]}-d features but the model expects "
                         f"{model.config.v_feature_size}")
    if args.question is not None:
        answers = answer(model, args.question, regions, args)
        return {"question": args.question, "answers": [{"answer": a, "score": s} for a, s in answers]}
    found = ground(model, args.expression, regions, args)
    draw_box(image, found["box"], f"{args.expression}: {found['score']:.2f}", Path(args.out))
    return {"expression": args.expression, **found, "out": str(args.out)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"vilbert predict: {err}", file=sys.stderr)
        return 2
    if "answers" in result:
        for item in result["answers"]:
            print(f"{item['score']:.3f}  {item['answer']}")
    else:
        print(json.dumps(result))
    return 0
