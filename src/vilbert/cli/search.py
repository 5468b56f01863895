"""`vilbert search`: the images of an index that best match a text.

    vilbert search --index images.index --text "a red cube left of a ball" --top 10 [--draw hits.png]
    vilbert search --index images.index --text "..." --rerank-top 32     (ViLBERT re-scores the 32 best)

Prints rank, image id and score (the first stage's cosine similarity; ViLBERT's pair score for
re-ranked images) and where the time went. The index's own model is used (`--checkpoint` must be
that model). See `vilbert.pipelines.search`.
"""

from __future__ import annotations

import argparse
import sys

from vilbert.cli.common import add_runtime_args, run_command
from vilbert.pipelines.search import SearchResult, SearchRun, search

PROG = "vilbert search"
DEFAULTS = SearchRun(index="", text="")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", required=True, help="an index written by `vilbert index`")
    p.add_argument("--text", required=True, help="what to look for")
    p.add_argument("--top", type=int, default=DEFAULTS.top, help="images to show (default %(default)s)")
    p.add_argument("--rerank-top", type=int, default=DEFAULTS.rerank_top, metavar="K",
                   help="re-score the first stage's K best with ViLBERT (reads their regions from the index's store)")
    p.add_argument("--checkpoint", default=None, help="the model (default: the one the index records; it must be that one)")
    p.add_argument("--features", default=None, help="the feature store for --rerank-top (default: the index's)")
    p.add_argument("--draw", default=None, help="also draw the results into this PNG")
    p.add_argument("--images", default=None, help="the images' folder for --draw (default: the one the index records)")
    p.add_argument("--max-text-length", type=int, default=DEFAULTS.max_text_length,
                   help="tokens of the query (default %(default)s)")
    add_runtime_args(p)
    return p


def report(result: SearchResult) -> str:
    timing = ", ".join(f"{name} {1000 * s:.1f} ms" for name, s in result.seconds.items())
    lines = [f"{PROG}: {result.images:,} images ({timing})", f"{'rank':>4}  {'image':<12} {'score':>7}  ViLBERT"]
    for hit in result.hits:
        rerank = "" if hit.rerank_score is None else f"{hit.rerank_score:.3f}"
        lines.append(f"{hit.rank:>4}  {hit.image_id:<12} {hit.score:>7.4f}  {rerank}")
    if result.drawing is not None:
        lines.append(f"drawn: {result.drawing}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    result = search(SearchRun(index=args.index, text=args.text, top=args.top, checkpoint=args.checkpoint,
                              features=args.features, rerank_top=args.rerank_top, draw=args.draw, images=args.images,
                              max_text_length=args.max_text_length, device=args.device))
    print(report(result))


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, build_parser(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
