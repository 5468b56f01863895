"""`vilbert predict`: answer a question about one image, or find the region an expression names;
or answer a file of questions about many images.

    vilbert predict --checkpoint RUN/model --image photo.png --question "what colour is the cube?"
    vilbert predict --checkpoint RUN/model --image photo.png --expression "the red cube" --out box.png
    vilbert predict --checkpoint RUN/model --questions questions.jsonl --out answers.jsonl

Regions are made as the model's training features were: with `--features STORE`'s extractor and
settings, or a released checkpoint's `--detector` with its weights, or EfficientNet-Lite0 on
`--boxes` (a COCO-style file, the image's entry found by file name) or a multi-scale grid. Question
mode needs a "vqa" head, expression mode a "region_score" head. A questions file holds one JSON
object a line, {"image": path, "question": text, ...}; each line comes back with its "answers".
This command is a thin layer over `vilbert.VQA` / `vilbert.Grounding`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vilbert.cli.common import add_detector_args, add_runtime_args, run_command
from vilbert.data.readers.common import FormatError, iter_jsonl, require, text_field
from vilbert.features.extract import ExtractConfig
from vilbert.inference import VQA, Grounding
from vilbert.inference.images import boxes_from_file
from vilbert.inference.predictors import MAX_REGIONS
from vilbert.io.atomic import atomic_path
from vilbert.viz.boxes import draw_box

PROG = "vilbert predict"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a saved model directory")
    p.add_argument("--image", default=None, help="the image file (with --question or --expression)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--question", help="a question: prints the top answers with their scores")
    what.add_argument("--expression", help="a referring expression: draws the chosen box on the image")
    what.add_argument("--questions", help="a jsonl file of {\"image\", \"question\"}: writes --out with the answers")
    p.add_argument("--top", type=int, default=5, help="answers per question (default %(default)s)")
    p.add_argument("--out", default=None, help="the PNG with the chosen box (--expression), or the answers jsonl")
    p.add_argument("--boxes", default=None, help="COCO-style boxes JSON; the image's entry is found by file name")
    p.add_argument("--features", default=None,
                   help="a feature store whose extractor and settings to reuse (a detector store names its detector)")
    p.add_argument("--image-size", type=int, default=None,
                   help=f"extraction canvas (default: the store's, or {ExtractConfig.image_size})")
    p.add_argument("--max-regions", type=int, default=MAX_REGIONS)
    p.add_argument("--max-text-length", type=int, default=None, help="default: the task recipe's")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per forward (questions file)")
    add_detector_args(p)
    add_runtime_args(p)
    return p


def _load(cls, args: argparse.Namespace):
    return cls.from_pretrained(args.checkpoint, device=args.device, features=args.features, detector=args.detector,
                               detector_weights=args.detector_weights, detector_config=args.detector_config,
                               image_size=args.image_size, max_regions=args.max_regions,
                               max_text_length=args.max_text_length)


def _questions(path: str) -> list[dict[str, Any]]:
    rows = []
    for line, record in iter_jsonl(path):
        require(record, ("image", "question"), path, f"line {line}")
        text_field(record, "image", path, f"line {line}")
        text_field(record, "question", path, f"line {line}")
        rows.append(record)
    if not rows:
        raise FormatError(f"{path} holds no questions")
    return rows


def answer_file(args: argparse.Namespace) -> None:
    if args.out is None:
        raise ValueError("--questions needs --out for the answers (a jsonl file)")
    rows = _questions(args.questions)
    base = Path(args.questions).parent
    images = [Path(r["image"]) if Path(r["image"]).is_absolute() else base / r["image"] for r in rows]
    vqa = _load(VQA, args)
    with atomic_path(args.out) as tmp, open(tmp, "w") as out:
        for start in tqdm(range(0, len(rows), args.batch_size), desc="answering", unit="batch",
                          disable=args.no_progress):
            chunk = slice(start, start + args.batch_size)
            found = vqa.answer(images[chunk], [r["question"] for r in rows[chunk]], args.top, args.batch_size)
            for row, answers in zip(rows[chunk], found):
                out.write(json.dumps({**row, "answers": [{"answer": a.answer, "score": a.score} for a in answers]})
                          + "\n")
    print(f"{PROG}: answered {len(rows)} questions into {args.out}")


def run(args: argparse.Namespace) -> None:
    if args.questions is not None:
        return answer_file(args)
    if args.image is None:
        raise ValueError("--question and --expression need --image")
    image = Path(args.image)
    if not image.is_file():
        raise FileNotFoundError(f"image {image} does not exist")
    if args.expression is not None and args.out is None:
        raise ValueError("--expression needs --out PNG for the drawn box")
    boxes = None if args.boxes is None else boxes_from_file(image, args.boxes)
    if args.question is not None:
        vqa = _load(VQA, args)
        for a in vqa.answer([image], [args.question], args.top, boxes=[boxes])[0]:
            print(f"{a.score:.3f}  {a.answer}")
        return None
    found = _load(Grounding, args).locate(image, args.expression, boxes=[boxes])
    draw_box(image, list(found.box), f"{args.expression}: {found.score:.2f}", args.out)
    print(json.dumps({"expression": args.expression, "box": list(found.box), "region": found.region,
                      "logit": found.logit, "score": found.score, "out": str(args.out)}))
    return None


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, build_parser(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
