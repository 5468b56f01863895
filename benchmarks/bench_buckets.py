"""Training at real caption lengths: the plain shuffled batches against length-bucketed ones
(`TrainConfig.bucket_by_length`, `vilbert.train.buckets.LengthBuckets`), interleaved in one process.

Caption lengths are drawn like Conceptual Captions' (its paper: 10.3 words on average, most
between 5 and 20): words ~ lognormal around 9.5 (sigma 0.35), 1.15 word pieces a word, plus [CLS]
and [SEP], truncated at the original's 36 tokens. Both orders cover the same examples; each batch
is padded to its longest caption as the library's collate does, regions fixed at 37 (36 + [IMG]).
Steps alternate plain / bucketed (each from its own order, same model and optimizer), so that a
shared machine's drift hits both alike; a 2048^3 matmul is timed between them and each side's
FLOP/s is divided by the median of those peaks.

    python benchmarks/bench_buckets.py [--threads 2] [--steps 12] [--preset base] [--batch 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_model import count_flops, make_batch, make_optimizer, matmul_peak, train_step

from vilbert.model import build_model, load_preset
from vilbert.train.buckets import LengthBuckets
from vilbert.train.distributed import epoch_order

MAX_TOKENS = 36  # the original's text length


def caption_lengths(n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    words = torch.exp(torch.randn(n, generator=g) * 0.35 + torch.log(torch.tensor(9.5)))
    return [min(MAX_TOKENS, 2 + round(1.15 * float(w))) for w in words]


def plain_batches(lengths: list[int], batch: int, seed: int) -> list[list[int]]:
    order = epoch_order(len(lengths), seed, 0).tolist()
    return [order[i : i + batch] for i in range(0, len(order) - batch + 1, batch)]


def bucketed_batches(lengths: list[int], batch: int, seed: int) -> list[list[int]]:
    return [b.indices for b in LengthBuckets(lengths, batch).epoch_batches(seed, 0) if len(b.indices) == batch]


def padded_step_inputs(config, batch_lengths: list[int], seed: int):
    """A training batch of these caption lengths, padded to the longest (mask 0 past each length)."""
    inputs, words, regions, targets = make_batch(config, len(batch_lengths), tokens=max(batch_lengths), seed=seed)
    for row, length in enumerate(batch_lengths):
        inputs["attention_mask"][row, length:] = 0
        words[row, length:] = False
    words[:, 1] = True
    g = torch.Generator().manual_seed(seed)
    targets["words"] = torch.randint(0, config.vocab_size, (int(words.sum()),), generator=g)
    return inputs, words, regions, targets


_FLOPS: dict[tuple, float] = {}


def step_flops(model, batch) -> float:
    """Matmul FLOPs of a training step's forward and backward on a batch of this shape (counted
    once per shape; the optimizer's elementwise update is not counted, as in bench_model)."""
    inputs, words, regions, targets = batch
    key = (tuple(inputs["input_ids"].shape), int(words.sum()), int(regions.sum()))
    if key not in _FLOPS:
        def forward_backward():
            out = model(**inputs, heads=("masked_word", "masked_region", "alignment"), masked_word_positions=words)
            sum(v.float().sum() for v in out.logits.values()).backward()

        _FLOPS[key] = count_flops(forward_backward)
        model.zero_grad(set_to_none=True)
    return _FLOPS[key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12, help="timed steps of each order")
    parser.add_argument("--preset", default="base")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--examples", type=int, default=4000, help="captions drawn (the epoch both orders cut)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = load_preset(args.preset, heads={"masked_word": {}, "masked_region": {}, "alignment": {}})
    model = build_model(config).train()
    optimizer, kind = make_optimizer(model)
    lengths = caption_lengths(args.examples)
    orders = {"plain": plain_batches(lengths, args.batch, 0), "bucketed": bucketed_batches(lengths, args.batch, 0)}

    def padded_tokens(order: list[list[int]]) -> float:
        return statistics.fmean(max(lengths[i] for i in b) for b in order)

    times: dict[str, list[float]] = {name: [] for name in orders}
    flops: dict[str, list[float]] = {name: [] for name in orders}
    peaks = []
    train_step(model, optimizer, *padded_step_inputs(config, [MAX_TOKENS] * args.batch, 0))  # warm-up
    for step in range(args.steps):
        peaks.append(matmul_peak())
        for name, order in orders.items():
            batch = padded_step_inputs(config, [lengths[i] for i in order[step]], step)
            flops[name].append(step_flops(model, batch))
            start = time.perf_counter()
            train_step(model, optimizer, *batch)
            times[name].append(time.perf_counter() - start)
    peak = statistics.median(peaks)
    print(f"preset {args.preset}, fp32, {torch.get_num_threads()} threads, torch {torch.__version__}, AdamW {kind}, "
          f"batch {args.batch}, {args.steps} interleaved steps of each order")
    print(f"caption tokens: mean {statistics.fmean(lengths):.1f}, 10th-90th percentile "
          f"{sorted(lengths)[len(lengths) // 10]}-{sorted(lengths)[9 * len(lengths) // 10]}; fp32 matmul peak "
          f"(2048^3, median of {len(peaks)}): {peak:.1f} GFLOP/s")
    rates = {}
    for name in orders:
        seconds = sum(times[name])
        rates[name] = args.batch * args.steps / seconds
        gflops = sum(flops[name]) / seconds / 1e9
        print(f"{name:9s} padded to {padded_tokens(orders[name]):4.1f} tokens a batch on average: "
              f"{rates[name]:6.2f} samples/s, {gflops:6.1f} GFLOP/s, {100 * gflops / peak:5.1f}% of peak")
    print(f"bucketed / plain samples/s: {rates['bucketed'] / rates['plain']:.2f}x")


if __name__ == "__main__":
    main()
