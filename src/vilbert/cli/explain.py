"""`vilbert explain`: draw which regions each word attends to, and which words each region
attends to, for one image and one sentence.

    vilbert explain --checkpoint RUN/model --image photo.png --text "the red circle" --out attn.png

Regions come from `--boxes` (a COCO-style file such as a world's proposals.json; the image's
entry is found by file name) or, without it, the features module's multi-scale grid. The
attention is averaged over heads and over every co-attention layer, or over `--layer K` only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vilbert explain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a saved model directory (config.json + model.safetensors)")
    p.add_argument("--image", required=True, help="the image file")
    p.add_argument("--text", required=True, help="the sentence (caption, question or expression)")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--boxes", default=None, help="COCO-style boxes JSON; default: a multi-scale grid")
    p.add_argument("--features", default=None, help="a feature store whose extraction settings to reuse")
    p.add_argument("--image-size", type=int, default=None, help="extraction canvas (default: the store's, or 384)")
    p.add_argument("--layer", type=int, action="append", default=None,
                   help="co-attention layer to show (repeatable; default: the mean of all)")
    p.add_argument("--top", type=int, default=4, help="regions whose word weights are drawn")
    p.add_argument("--max-regions", type=int, default=36)
    p.add_argument("--max-text-length", type=int, default=36)
    p.add_argument("--json", default=None, help="also write the averaged attention maps as JSON here")
    return p


def run(args: argparse.Namespace) -> dict:
    from vilbert.cli.predict import extract_regions
    from vilbert.model import load_pretrained
    from vilbert.viz.attention import co_attention_maps, draw_co_attention, top_regions

    checkpoint = Path(args.checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint} is not a saved model directory (no config.json)")
    model = load_pretrained(checkpoint)
    regions = extract_regions(Path(args.image), args.boxes, args.features, args.image_size)
    if regions.features.shape[1] != model.config.v_feature_size:
        raise ValueError(f"extracted {regions.features.shape[1]}-d features from {args.image} but the model "
                         f"in {checkpoint} expects {model.config.v_feature_size}")
    maps = co_attention_maps(model, args.text, regions, args.max_text_length, args.max_regions, args.layer)
    out = draw_co_attention(args.image, maps, args.out, top_k=args.top, title=f'"{args.text}"')
    summary = {"out": str(out), "tokens": maps.tokens, "layers": maps.layers,
               "top_regions": [{"region": r, "box": maps.boxes[r - 1].tolist()} for r in top_regions(maps, args.top)]}
    if args.json:
        Path(args.json).write_text(json.dumps({**summary, "text_to_image": maps.text_to_image.tolist(),
                                               "image_to_text": maps.image_to_text.tolist()}) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"vilbert explain: {err}", file=sys.stderr)
        return 2
    words = " ".join(summary["tokens"])
    print(f"wrote {summary['out']} ({words}; layers {summary['layers']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
