"""`vilbert predict`: answer a question about one image, or find the region an expression names.

    vilbert predict --checkpoint RUN/model --image photo.png --question "what colour is the cube?"
    vilbert predict --checkpoint RUN/model --image photo.png --expression "the red cube" --out box.png

Regions come from `--boxes` (a COCO-style file such as a world's proposals.json, filtered to this
image by file name) or, without it, the multi-scale grid of the features module. Features are
extracted on the fly with the same code (and, given `--features STORE`, the same settings) as the
store the model was trained on. Question mode needs a "vqa" head; expression mode a
"region_score" head (a model fine-tuned on referring expressions). See `vilbert.pipelines.predict`.
"""

from __future__ import annotations

import argparse
import json
import sys

from vilbert.cli.common import add_detector_args, add_runtime_args, run_command
from vilbert.features.extract import ExtractConfig
from vilbert.pipelines.predict import PredictRun, predict

PROG = "vilbert predict"
DEFAULTS = PredictRun(checkpoint="", image="", question="")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a saved model directory")
    p.add_argument("--image", required=True, help="the image file")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--question", help="a question: prints the top answers with their scores")
    what.add_argument("--expression", help="a referring expression: draws the chosen box on the image")
    p.add_argument("--top", type=int, default=DEFAULTS.top, help="answers to print (question mode)")
    p.add_argument("--out", default=None, help="PNG to write the chosen box on (expression mode)")
    p.add_argument("--boxes", default=None, help="COCO-style boxes JSON; the image's entry is found by file name")
    p.add_argument("--features", default=None,
                   help="a feature store whose extraction settings (backbone, image size) to reuse")
    p.add_argument("--image-size", type=int, default=None, help=f"extraction canvas (default: the store's, or {ExtractConfig.image_size})")
    p.add_argument("--max-regions", type=int, default=DEFAULTS.max_regions)
    p.add_argument("--max-text-length", type=int, default=None, help="default: the task recipe's")
    add_runtime_args(p)
    add_detector_args(p)
    return p


def run(args: argparse.Namespace) -> None:
    result = predict(PredictRun(
        checkpoint=args.checkpoint, image=args.image, question=args.question, expression=args.expression,
        out=args.out, top=args.top, boxes=args.boxes, features=args.features, image_size=args.image_size,
        max_regions=args.max_regions, max_text_length=args.max_text_length, device=args.device,
        detector=args.detector, detector_weights=args.detector_weights, detector_config=args.detector_config,
    ))
    if "answers" in result:
        for item in result["answers"]:
            print(f"{item['score']:.3f}  {item['answer']}")
    else:
        print(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, build_parser(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
