"""Training steps of the plain model against the same model under `torch.compile` (inductor), at the
original's shapes (36 tokens, 37 regions), interleaved in one process.

Inductor fuses the small elementwise ops that make up the third of a training step that is not
matmuls (bias + GELU, dropout + residual add, LayerNorm): this is the A/B that says whether that
fusion pays on this machine. Both sides start from the same weights and take the same batches; a
2048^3 matmul is timed between steps and each side's FLOP/s is divided by the median of those
peaks. Compilation time (the first steps) is reported apart and not in the rates. Before
training, one forward of each side on the same batch in eval mode is compared (the largest
difference of the logits is printed: the compiled path must compute the same function). After
that the weights part: inductor draws dropout masks from its own generator, so the two sides
train on different masks.

    python benchmarks/bench_compile.py [--threads 2] [--steps 6] [--preset base] [--batch 8] [--mode default]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from bench_model import count_flops, make_batch, make_optimizer, matmul_peak, train_step

from vilbert.model import build_model, load_preset

HEADS = ("masked_word", "masked_region", "alignment")


def max_logit_difference(plain, compiled, inputs, words) -> float:
    plain.eval(), compiled.eval()
    with torch.no_grad():
        a = plain(**inputs, heads=HEADS, masked_word_positions=words).logits
        b = compiled(**inputs, heads=HEADS, masked_word_positions=words).logits
    plain.train(), compiled.train()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed steps of each side")
    parser.add_argument("--preset", default="base")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--mode", default="default", help="torch.compile mode (default, max-autotune-no-cudagraphs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = load_preset(args.preset, heads={h: {} for h in HEADS})
    plain = build_model(config).train()
    twin = copy.deepcopy(plain)
    # dynamic=None: a second shape (the count of masked words changes every batch) makes that
    # dimension symbolic instead of compiling once per count.
    compiled = torch.compile(twin, mode=args.mode, dynamic=None)
    sides = {"plain": (plain, make_optimizer(plain)[0]), "compiled": (compiled, make_optimizer(twin)[0])}
    batch = make_batch(config, args.batch, seed=0)
    before = max_logit_difference(plain, compiled, batch[0], batch[1])

    start = time.perf_counter()
    train_step(compiled, sides["compiled"][1], *batch)
    train_step(compiled, sides["compiled"][1], *batch)
    compile_seconds = time.perf_counter() - start
    train_step(plain, sides["plain"][1], *batch)
    train_step(plain, sides["plain"][1], *batch)  # both sides now two updates in

    def forward_backward():
        out = plain(**batch[0], heads=HEADS, masked_word_positions=batch[1])
        sum(v.float().sum() for v in out.logits.values()).backward()

    flops = count_flops(forward_backward)
    plain.zero_grad(set_to_none=True)
    times: dict[str, list[float]] = {name: [] for name in sides}
    peaks = []
    for step in range(args.steps):
        peaks.append(matmul_peak())
        inputs = make_batch(config, args.batch, seed=step + 1)
        for name, (model, optimizer) in sides.items():
            start = time.perf_counter()
            train_step(model, optimizer, *inputs)
            times[name].append(time.perf_counter() - start)
    peak = statistics.median(peaks)
    print(f"preset {args.preset}, fp32, {torch.get_num_threads()} threads, torch {torch.__version__}, batch "
          f"{args.batch}, 36 tokens x 37 regions, {args.steps} interleaved steps of each side, mode {args.mode}")
    print(f"compilation (first two compiled steps): {compile_seconds:.1f} s; fp32 matmul peak (2048^3, median "
          f"of {len(peaks)}): {peak:.1f} GFLOP/s")
    print(f"largest logit difference, compiled vs plain (eval forward, same weights): {before:.2e}")
    rates = {}
    for name in sides:
        seconds = statistics.median(times[name])
        rates[name] = args.batch / seconds
        gflops = flops / seconds / 1e9
        print(f"{name:9s} median step {seconds * 1000:7.1f} ms: {rates[name]:6.2f} samples/s, {gflops:6.1f} GFLOP/s, "
              f"{100 * gflops / peak:5.1f}% of peak")
    print(f"compiled / plain samples/s: {rates['compiled'] / rates['plain']:.2f}x")


if __name__ == "__main__":
    main()
