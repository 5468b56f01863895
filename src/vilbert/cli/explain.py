"""`vilbert explain`: draw which regions each word attends to, and which words each region
attends to, for one image and one sentence.

    vilbert explain --checkpoint RUN/model --image photo.png --text "the red circle" --out attn.png

Regions come from `--boxes` (a COCO-style file such as a world's proposals.json; the image's
entry is found by file name) or, without it, the features module's multi-scale grid. The
attention is averaged over heads and over every co-attention layer, or over `--layer K` only.
See `vilbert.pipelines.explain`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vilbert.cli.common import add_detector_args, add_runtime_args, run_command
from vilbert.features.extract import ExtractConfig
from vilbert.inference import Explainer
from vilbert.inference.images import boxes_from_file
from vilbert.inference.predictors import MAX_REGIONS
from vilbert.io.atomic import write_json
from vilbert.viz.attention import draw_co_attention, top_regions

PROG = "vilbert explain"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a saved model directory (config.json + model.safetensors)")
    p.add_argument("--image", required=True, help="the image file")
    p.add_argument("--text", required=True, help="the sentence (caption, question or expression)")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--boxes", default=None, help="COCO-style boxes JSON; default: a multi-scale grid")
    p.add_argument("--features", default=None, help="a feature store whose extraction settings to reuse")
    p.add_argument("--image-size", type=int, default=None, help=f"extraction canvas (default: the store's, or {ExtractConfig.image_size})")
    p.add_argument("--layer", type=int, action="append", default=None,
                   help="co-attention layer to show (repeatable; default: the mean of all)")
    p.add_argument("--top", type=int, default=4, help="regions whose word weights are drawn")
    p.add_argument("--max-regions", type=int, default=MAX_REGIONS)
    p.add_argument("--max-text-length", type=int, default=None, help="default: a caption's (36)")
    p.add_argument("--json", default=None, help="also write the averaged attention maps as JSON here")
    add_detector_args(p)
    add_runtime_args(p)
    return p


def run(args: argparse.Namespace) -> None:
    checkpoint = Path(args.checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint} is not a saved model directory (no config.json)")
    image = Path(args.image)
    if not image.is_file():
        raise FileNotFoundError(f"image {image} does not exist")
    explainer = Explainer.from_pretrained(
        checkpoint, device=args.device, features=args.features, detector=args.detector,
        detector_weights=args.detector_weights, detector_config=args.detector_config, image_size=args.image_size,
        max_regions=args.max_regions, max_text_length=args.max_text_length,
    )
    boxes = None if args.boxes is None else boxes_from_file(image, args.boxes)
    maps = explainer.attention(image, args.text, args.layer, boxes)
    out = draw_co_attention(image, maps, args.out, top_k=args.top, title=f'"{args.text}"')
    if args.json:
        write_json(args.json, {"out": str(out), "tokens": maps.tokens, "layers": maps.layers,
                               "top_regions": [{"region": r, "box": maps.boxes[r - 1].tolist()}
                                               for r in top_regions(maps, args.top)],
                               "text_to_image": maps.text_to_image.tolist(), "image_to_text": maps.image_to_text.tolist()})
    print(f"wrote {out} ({' '.join(maps.tokens)}; layers {maps.layers})")


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, build_parser(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
