"""`vilbert world`: generate the synthetic world in the real datasets' file formats."""

from __future__ import annotations

import argparse
import sys

from vilbert.cli.common import add_runtime_args, run_command
from vilbert.world import WorldConfig, generate_world

PROG = "vilbert world"


def build_parser() -> argparse.ArgumentParser:
    d = WorldConfig()
    p = argparse.ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("--out", required=True, help="output directory (reused if it holds the same world)")
    p.add_argument("--images", type=int, default=d.num_images, help="number of images (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=1, help="processes; the output is identical for any count")
    p.add_argument("--image-size", type=int, default=d.image_size, help="image side in pixels (default %(default)s)")
    p.add_argument("--train-fraction", type=float, default=d.train_fraction)
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help="test gets the rest")
    p.add_argument("--extra-test-images", type=int, default=d.extra_test_images,
                   help="more test images beyond that split, leaving train and val as they are (default %(default)s)")
    add_runtime_args(p, device=False)
    return p


def run(args: argparse.Namespace) -> None:
    path = generate_world(args.out, WorldConfig(num_images=args.images, seed=args.seed, image_size=args.image_size,
                                                train_fraction=args.train_fraction, val_fraction=args.val_fraction,
                                                extra_test_images=args.extra_test_images),
                          workers=args.workers, progress=not args.no_progress)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, build_parser(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
