"""`vilbert index`: embed every image of a feature store for text search (retrieval's first stage).

    vilbert index --checkpoint FT/model --features WORLD/features.lmdb --out images.index [--images WORLD/images]

The model needs a contrastive head (fine-tune retrieval with `--option contrastive_weight=...`,
or pretrain with `--contrastive-weight`). The index records the checksums of the model and the
store it came from, and `vilbert search` refuses any other. See `vilbert.pipelines.index`.
"""

from __future__ import annotations

import argparse
import sys

from vilbert.cli.common import add_runtime_args, run_command
from vilbert.pipelines.index import IndexRun, build_index

PROG = "vilbert index"
DEFAULTS = IndexRun(model="", features="", out="")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a saved model directory with a contrastive head")
    p.add_argument("--features", required=True, help="the region feature store whose images to index")
    p.add_argument("--out", required=True, help="the index file to write")
    p.add_argument("--images", default=None, help="the images' folder (<id>.png), recorded for `vilbert search --draw`")
    p.add_argument("--max-regions", type=int, default=DEFAULTS.max_regions,
                   help="real regions per image (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="images per forward (default %(default)s)")
    add_runtime_args(p)
    return p


def run(args: argparse.Namespace) -> None:
    index = build_index(IndexRun(model=args.checkpoint, features=args.features, out=args.out, images=args.images,
                                 max_regions=args.max_regions, batch_size=args.batch_size, device=args.device,
                                 progress=not args.no_progress))
    print(f"{PROG}: {len(index.image_ids):,} images, {index.info['dim']}-d embeddings -> {index.path}")


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, build_parser(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
