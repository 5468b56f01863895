"""`vilbert features`: images (and optional boxes) -> a region feature store, or import an
original ViLBERT feature LMDB.

    vilbert features --images DIR [--boxes COCO.json | --detector mod:fn | --detector det.onnx] --out STORE
    vilbert features --images vcr1images --vcr-boxes train.jsonl val.jsonl test.jsonl --out STORE
    vilbert features --images DIR --detector bottom-up-r101 --detector-weights pytorch_model.bin --out STORE
    vilbert features --images DIR --detector x152-fpn --detector-weights detectron_model.pth [--boxes COCO.json] --out STORE
    vilbert features --import-legacy ORIGINAL_LMDB --out STORE

The released checkpoints' detectors (bottom-up-r101: vilbert_beta, LXMERT; x152-fpn:
vilbert-multi-task) give the 2048-d features those checkpoints expect; EfficientNet-Lite0 (the
default) is the fast extractor for models trained with this library.

Boxes from --boxes are used as given, and so are VCR's (each image's metadata boxes, in object
order); grid and detector boxes are limited to --min-boxes..--max-boxes (detector boxes after
NMS). Rerunning the same command adds only the images the store lacks; unreadable images are
listed in STORE/failures.jsonl. See `vilbert.pipelines.features`.
"""

from __future__ import annotations

import argparse
import sys

from vilbert.cli.common import JobFailed, add_runtime_args, run_command
from vilbert.detect import DETECTORS, list_detectors
from vilbert.features.extract import ExtractConfig
from vilbert.features.fill import FAILURES_FILE
from vilbert.features.legacy import import_legacy
from vilbert.pipelines.features import FeaturesRun, extract

PROG = "vilbert features"


def build_parser() -> argparse.ArgumentParser:
    d = ExtractConfig()
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of images (ids = file names without suffix, or from --boxes)")
    source.add_argument("--import-legacy", metavar="LMDB", help="import an original ViLBERT feature LMDB")
    parser.add_argument("--out", required=True, help="feature store to create or extend (an LMDB directory)")
    boxes = parser.add_mutually_exclusive_group()
    boxes.add_argument("--boxes", help="COCO-style boxes file (images + annotations bbox [x,y,w,h]); used as given")
    boxes.add_argument("--vcr-boxes", nargs="+", metavar="VCR_JSONL",
                       help="VCR jsonl files: each image's metadata boxes in object order (--images = vcr1images/)")
    det = parser.add_argument_group("detector")
    det.add_argument("--detector", help=f"a released checkpoint's detector ({', '.join(list_detectors())}; with "
                                        "--detector-weights), or 'package.module:function' / a .onnx file returning boxes "
                                        "and scores (features from EfficientNet)")
    det.add_argument("--detector-weights", default=None,
                     help="the detector's weights: " + "; ".join(f"{n}: {DETECTORS[n].weights_files}"
                                                                 for n in list_detectors()))
    det.add_argument("--detector-config", default=None,
                     help="a JSON file of detector settings over the released architecture (thresholds, box counts)")
    det.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                     help="autocast for a released detector on a GPU (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="images per backbone batch")
    parser.add_argument("--image-size", type=int, default=d.image_size,
                        help="longer image side after resizing, multiple of 32 (default %(default)s)")
    parser.add_argument("--output-stride", type=int, choices=(16, 32), default=d.output_stride,
                        help="feature map stride; 16 = twice finer map (atrous last stage), ~2x slower")
    parser.add_argument("--min-boxes", type=int, default=d.min_boxes)
    parser.add_argument("--max-boxes", type=int, default=d.max_boxes)
    parser.add_argument("--nms-iou", type=float, default=d.iou_threshold, help="NMS IoU for detector boxes")
    parser.add_argument("--score-threshold", type=float, default=d.score_threshold)
    parser.add_argument("--fp16-store", action="store_true", help="store features and cls_prob as float16")
    parser.add_argument("--colour-features", action="store_true",
                        help="append 40 dims pooled from an early stride-8 map, which keeps colour (the final "
                             "ImageNet features nearly drop it); the demo uses it")
    parser.add_argument("--workers", type=int, default=d.workers, help="image-decoding processes")
    add_runtime_args(parser)
    return parser


def run(args: argparse.Namespace) -> None:
    if args.import_legacy:
        written = import_legacy(args.import_legacy, args.out, fp16=args.fp16_store, progress=not args.no_progress)
        print(f"{PROG}: imported {written} images from {args.import_legacy} into {args.out}")
        return
    config = ExtractConfig(
        image_size=args.image_size, output_stride=args.output_stride, batch_size=args.batch_size,
        min_boxes=args.min_boxes, max_boxes=args.max_boxes, iou_threshold=args.nms_iou,
        score_threshold=args.score_threshold, fp16_store=args.fp16_store, workers=args.workers,
        colour_features=args.colour_features,
    )
    report = extract(FeaturesRun(
        images=args.images, out=args.out, boxes=args.boxes, vcr_boxes=tuple(args.vcr_boxes or ()),
        detector=args.detector, weights=args.detector_weights, detector_config=args.detector_config, config=config,
        device=args.device, precision=args.precision, progress=not args.no_progress,
    ))
    print(
        f"{PROG}: wrote {report.written} images ({report.images_per_second:.1f} images/s), "
        f"skipped {report.skipped} already in {args.out}, {report.failed} failed"
        + (f" (see {args.out}/{FAILURES_FILE})" if report.failed else "")
    )
    if report.failed and not report.written and not report.skipped:
        raise JobFailed(f"no image could be extracted (see {args.out}/{FAILURES_FILE})")


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, build_parser(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
