"""`vilbert world`: generate the synthetic world in the real datasets' file formats."""

from __future__ import annotations

import argparse
import sys

# Small enough that the demo (features, pretraining, four tasks) stays short on a CPU.
DEFAULT_IMAGES = 2000


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vilbert world", description=__doc__)
    p.add_argument("--out", required=True, help="output directory (reused if it holds the same world)")
    p.add_argument("--images", type=int, default=DEFAULT_IMAGES, help=f"number of images (default {DEFAULT_IMAGES})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes; the output is identical for any count")
    p.add_argument("--image-size", type=int, default=224, help="image side in pixels")
    p.add_argument("--train-fraction", type=float, default=0.8)
    p.add_argument("--val-fraction", type=float, default=0.1, help="test gets the rest")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vilbert.world import generate_world

    try:
        path = generate_world(args.out, args.images, args.seed, workers=args.workers,
                              image_size=args.image_size, train_fraction=args.train_fraction,
                              val_fraction=args.val_fraction, progress=not args.no_progress)
    except (ValueError, FileExistsError) as err:
        print(f"vilbert world: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
