"""Speed of the paper's base model on this CPU, fp32, at the original code's shapes.

Training step (forward + backward + AdamW) at batch 8 and inference (VQA head) at batch 32, with
36 tokens and 37 regions (36 + [IMG]). FLOPs are counted by torch's FlopCounterMode on the very
step being timed, and divided by this machine's fp32 matmul peak, measured in the same run and
interleaved with the model timings (shared machines drift by up to 25% between runs).

    python benchmarks/bench_model.py [--threads 2] [--steps 5] [--preset base] [--attention-ab] [--dropout-ab] [--breakdown]

The original code reached 2.6 samples/s training (~49% of peak) and 10.8 samples/s inference here.

Results (2026-11-22, torch 2.13.0 CPU, 2 threads, --steps 3). The machine was shared with other
jobs (load average 5-13 on 2 cores; the 2048^3 peak read 12-39 GFLOP/s instead of the usual
280-322), so only the % of the same-run peak is meaningful, and even that favours inference: many
small training ops each wait on a descheduled thread. Under load the training figure is a floor.
    before (SDPA everywhere; SDPA with dropout falls back to a composite path on CPU):
        training step    batch  8: 23.7-30.3% of peak   inference (vqa) batch 32: 75.7-83.0% of peak
    after (explicit attention under dropout in training, SDPA in eval):
        training step    batch  8: 24.9% of peak        inference (vqa) batch 32: 64.7% of peak
        (inference runs the same code as before: the 64.7-83.0% spread is the load, not the change)
    --attention-ab on the whole step was swamped by load (library/SDPA 15.9 s/10.8 s, a 5 s swing
    for a change worth ~0.03 s). Per attention call (fwd+bwd, p=0.1, 2 threads, min of 7,
    interleaved) the explicit path was 1.06x (text 12x36x36x64), 1.3x (visual 8x37x37x128) and
    2.1x (co-attention 8x36x37x128) faster than SDPA; attention is ~3% of a step either way.
At 1 thread a profiled training step spends ~83% of its time in matmuls (mm/addmm/bmm), ~3.5% in
fused AdamW, ~3% in dropout's bernoulli draws and the rest in small elementwise ops and copies.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from vilbert.model import build_model, layers, load_preset

layers_attend = layers.attend


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of an n x n matmul on this machine right now."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def make_batch(config, batch: int, tokens: int = 36, regions: int = 37, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    inputs = {
        "input_ids": torch.randint(1000, 20000, (batch, tokens), generator=g),
        "token_type_ids": torch.zeros(batch, tokens, dtype=torch.long),
        "attention_mask": torch.ones(batch, tokens, dtype=torch.long),
        "image_features": torch.rand(batch, regions, config.v_feature_size, generator=g),
        "image_locations": torch.rand(batch, regions, 5, generator=g),
        "image_mask": torch.ones(batch, regions, dtype=torch.long),
    }
    word_positions = torch.rand(batch, tokens, generator=g) < 0.15  # 15% of words, as in pretraining
    word_positions[:, 1] = True
    region_positions = torch.rand(batch, regions, generator=g) < 0.15
    region_positions[:, 1] = True
    targets = {
        "words": torch.randint(0, config.vocab_size, (int(word_positions.sum()),), generator=g),
        "region_probs": torch.softmax(torch.randn(int(region_positions.sum()), config.v_target_size, generator=g), -1),
        "aligned": torch.randint(0, 2, (batch,), generator=g),
    }
    return inputs, word_positions, region_positions, targets


def train_step(model, optimizer, inputs, word_positions, region_positions, targets) -> None:
    out = model(
        **inputs, heads=("masked_word", "masked_region", "alignment"), masked_word_positions=word_positions
    )
    region_logits = out.logits["masked_region"][region_positions]  # [M,C]
    loss = (
        F.cross_entropy(out.logits["masked_word"], targets["words"])
        + F.kl_div(region_logits.log_softmax(-1), targets["region_probs"], reduction="batchmean")
        + F.cross_entropy(out.logits["alignment"], targets["aligned"])
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def make_optimizer(model):
    try:
        return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True), "fused"
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, foreach=True), "foreach"


def sdpa_attend(q, k, v, mask, dropout_p=0.0, need_weights=False):
    """The previous attention: SDPA for every call without probabilities, dropout included."""
    if need_weights:
        return layers_attend(q, k, v, mask, dropout_p, need_weights)
    b, h, length, e = q.shape
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return context.transpose(1, 2).reshape(b, length, h * e), None  # [B,L,H*E]


def interleaved_ab(step, steps: int, owner, attribute: str, plain, other) -> tuple[float, float]:
    """Median seconds of `step` with owner.attribute = plain and = other, interleaved pair by pair
    (drift hits both alike); the plain one is put back."""
    times: dict[str, list[float]] = {"plain": [], "other": []}
    for _ in range(steps):
        for name, fn in (("plain", plain), ("other", other)):
            setattr(owner, attribute, fn)
            times[name] += timed(step, 1)
    setattr(owner, attribute, plain)
    return statistics.median(times["plain"]), statistics.median(times["other"])


def attention_ab(step, steps: int) -> None:
    """Training step with the library's attention vs SDPA everywhere, interleaved (A/B ratio)."""
    lib, sdpa = interleaved_ab(step, steps, layers, "attend", layers_attend, sdpa_attend)
    print(f"training step, attention A/B ({steps} interleaved pairs): library {lib * 1000:.1f} ms, "
          f"SDPA everywhere {sdpa * 1000:.1f} ms, speed-up {sdpa / lib:.3f}x")


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def breakdown(step, flops: float, peak: float, repeats: int = 3) -> None:
    """Where a training step's time goes (profiler self times, best of `repeats` profiled steps):
    the matmuls' share and their own % of peak, which bounds the whole step's: with every other op
    free the step would run at the matmuls' rate."""
    best = None
    for _ in range(repeats):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            step()
            wall = time.perf_counter() - t
        ops = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
        if best is None or wall < best[0]:
            best = (wall, ops)
    wall, ops = best
    total = sum(ops.values())
    matmul = sum(ops.get(k, 0.0) for k in MATMUL_OPS)
    rate = flops / matmul / 1e9
    print(f"breakdown of one profiled training step ({wall * 1000:.0f} ms wall, {total * 1000:.0f} ms of op self time):")
    print(f"  matmuls ({', '.join(k[6:] for k in MATMUL_OPS)}): {100 * matmul / total:.1f}% of the time, "
          f"at {rate:.1f} GFLOP/s = {100 * rate / peak:.1f}% of peak: the whole step's ceiling")
    others = sorted(((v, k) for k, v in ops.items() if k not in MATMUL_OPS), reverse=True)
    for seconds, name in others[:8]:
        print(f"  {name:40s} {100 * seconds / total:5.1f}%")
    print(f"  {'everything else':40s} {100 * sum(v for v, _ in others[8:]) / total:5.1f}%")


torch_dropout = F.dropout


def numpy_mask_dropout(x, p: float = 0.5, training: bool = True, inplace: bool = False):
    """Dropout whose keep mask comes from numpy's PCG64DXSM (16-bit draws, seeded by one draw of
    torch's generator): the lever "a cheaper dropout mask" measured, not the library's path. On
    CPU torch's bernoulli_ draws ~10 ns an element; 16-bit numpy draws ~1 ns."""
    if not training or p == 0.0:
        return x
    seed = int(torch.randint(0, 2**62, (1,)).item())
    draws = np.random.Generator(np.random.PCG64DXSM(seed)).integers(-32768, 32768, size=x.numel(), dtype=np.int16)
    keep = torch.from_numpy(draws).view(x.shape) >= round(p * 65536) - 32768
    return x * keep * (1.0 / (1.0 - p))


def dropout_ab(step, steps: int) -> None:
    """Training step with torch's dropout vs numpy-drawn masks, interleaved (A/B ratio)."""
    plain, fast = interleaved_ab(step, steps, F, "dropout", torch_dropout, numpy_mask_dropout)
    print(f"training step, dropout masks A/B ({steps} interleaved pairs): torch bernoulli_ {plain * 1000:.1f} ms, "
          f"numpy 16-bit draws {fast * 1000:.1f} ms, speed-up {plain / fast:.3f}x")


def count_flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def timed(fn, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--preset", default="base")
    parser.add_argument("--attention-ab", action="store_true", help="also time training attention A/B")
    parser.add_argument("--dropout-ab", action="store_true", help="also time torch's dropout masks against numpy-drawn ones")
    parser.add_argument("--breakdown", action="store_true",
                        help="also profile a training step: the matmuls' share of its time and their own % of peak")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = load_preset(args.preset, heads={"masked_word": {}, "masked_region": {}, "alignment": {}, "vqa": {}})
    model = build_model(config)
    optimizer, kind = make_optimizer(model)

    train_batch = make_batch(config, 8)
    model.train()
    step = lambda: train_step(model, optimizer, *train_batch)  # noqa: E731
    train_flops = count_flops(step)  # also the warm-up step
    infer_inputs = make_batch(config, 32)[0]

    def infer():
        with torch.inference_mode():
            model(**infer_inputs, heads=("vqa",))

    model.eval()
    infer_flops = count_flops(infer)

    train_times, infer_times, peaks = [], [], []
    for _ in range(args.steps):  # interleave so that drift hits all three alike
        peaks.append(matmul_peak())
        model.train()
        train_times += timed(step, 1)
        model.eval()
        infer_times += timed(infer, 1)
    if args.attention_ab:
        model.train()
        attention_ab(step, args.steps)
    peak = statistics.median(peaks)
    t_train, t_infer = statistics.median(train_times), statistics.median(infer_times)
    print(f"preset {args.preset}, fp32, {torch.get_num_threads()} threads, torch {torch.__version__}, AdamW {kind}")
    print(f"fp32 matmul peak (2048^3, median of {len(peaks)}): {peak:.1f} GFLOP/s")
    for name, batch, flops, t in (("training step", 8, train_flops, t_train), ("inference (vqa)", 32, infer_flops, t_infer)):
        rate = flops / t / 1e9
        print(
            f"{name:16s} batch {batch:2d}: {t * 1000:7.1f} ms  {batch / t:6.2f} samples/s  "
            f"{flops / 1e9:6.1f} GFLOP  {rate:6.1f} GFLOP/s  {100 * rate / peak:5.1f}% of peak"
        )
    if args.dropout_ab:
        model.train()
        dropout_ab(step, args.steps)
    if args.breakdown:
        model.train()
        breakdown(step, train_flops, peak)


if __name__ == "__main__":
    main()
