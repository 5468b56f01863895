"""Full retrieval scoring: pairs/s with the per-caption / per-image cache vs the plain forward.

Scores an N_captions x N_images matrix with the `small` preset (36 regions + [IMG], captions of
10-14 word pieces, random weights and features: speed does not depend on their values), both ways,
interleaved over several rounds in one process (these machines drift between runs), and prints the
best pairs/s of each, the speed-up, and the largest score difference between the two.

    python benchmarks/bench_retrieval.py                      # 20 images x 100 captions
    python benchmarks/bench_retrieval.py --images 100 --captions 500 --rounds 1

Last printed (2 CPU cores shared with other jobs, load average ~13, so absolute rates are low;
fp32, small preset, 36 regions, 10-14 tokens, 256 pairs/forward):
    20 x 100:  uncached 24.2 pairs/s, cached 32.6 pairs/s, speed-up 1.35x, max |diff| 0
    10 x 50:   uncached 21.6 pairs/s, cached 32.1 pairs/s, speed-up 1.48x, max |diff| 0
Why not more: in `small` the cache covers the image embedding and 4 of 6 text layers; the whole
visual stream (both layers follow a co-attention), 2 text layers and both co-attention layers
depend on the pair. Per pair that is ~165 M multiply-adds left of ~270 M, so ~1.6x is the ceiling.
"""

from __future__ import annotations

import argparse
import time

import torch

from vilbert.model import build_model, load_preset
from vilbert.model.pair_cache import ImageInputs, TextInputs, score_matrix


def make_inputs(n_captions: int, n_images: int, regions: int, feature_dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(10, 15, (n_captions,), generator=g)
    t = int(lengths.max())
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    ids = torch.randint(1000, 30000, (n_captions, t), generator=g) * mask
    text = TextInputs(ids, torch.zeros_like(ids), mask)
    features = torch.randn(n_images, regions + 1, feature_dim, generator=g)
    locations = torch.rand(n_images, regions + 1, 5, generator=g)
    images = ImageInputs(features, locations, torch.ones(n_images, regions + 1, dtype=torch.long))
    return text, images


def timed(model, text, images, cached: bool, batch_size: int) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    scores = score_matrix(model, text, images, cached=cached, batch_size=batch_size)
    return time.perf_counter() - start, scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--captions", type=int, default=100)
    parser.add_argument("--regions", type=int, default=36)
    parser.add_argument("--batch-size", type=int, default=256, help="pairs per forward")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = load_preset(args.preset)
    model = build_model(config).eval()
    model.add_head("pair_score")
    text, images = make_inputs(args.captions, args.images, args.regions, config.v_feature_size)
    pairs = args.captions * args.images
    timed(model, text, images, True, args.batch_size)  # warm-up (allocator, kernels)
    best = {True: float("inf"), False: float("inf")}
    results = {}
    for _ in range(args.rounds):
        for cached in (True, False):
            seconds, results[cached] = timed(model, text, images, cached, args.batch_size)
            best[cached] = min(best[cached], seconds)
    diff = float((results[True] - results[False]).abs().max())
    print(f"preset {args.preset}: {args.images} images x {args.captions} captions = {pairs} pairs, "
          f"{args.regions} regions + [IMG], 10-14 tokens, {args.batch_size} pairs/forward, "
          f"{args.threads} threads, best of {args.rounds}")
    print(f"uncached: {pairs / best[False]:8.1f} pairs/s ({best[False]:.2f} s)")
    print(f"cached:   {pairs / best[True]:8.1f} pairs/s ({best[True]:.2f} s)")
    print(f"speed-up: {best[False] / best[True]:.2f}x; max |score difference| {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
