"""Bottom-up-attention detector throughput: images/s at its test size (short side 600, long <= 1000)
and where the time goes (backbone, RPN, RoI heads = RoIPool + res5 on every proposal, selection).

    python benchmarks/bench_detect_bottom_up.py [--images 2] [--batch-size 1] [--threads 2]
                                                [--device cuda] [--precision fp16]

The full-size architecture (ResNet-101 C4, 300 proposals an image, 1600 classes) with random weights
(no real weights can be downloaded here); timing does not depend on the weights' values, except that
NMS cost varies with the boxes. Images: scikit-image's coffee / chelsea / astronaut photos when
scikit-image is installed (600x900, 600x902, 600x600 after resizing), else noise of the same sizes.
The first batch is a warm-up. The machine may be shared: the script prints the load average.

Last figures (this shared 2-CPU machine, 2 threads, fp32, load 4-6 from other jobs, so slow and noisy):
NCHW, batch 1: 0.032 images/s (31 s an image: backbone 4.4 s = 14 %, RPN 1.5 s, RoI heads 24.6 s = 79 %);
channels_last, batch 2: 0.035 images/s (29 s an image: backbone 2.6 s = 9 %, RoI heads 24.9 s = 87 %).
The RoI heads dominate: res5 (3 bottlenecks at 14x14, dilated) runs on each of 300 RoIs, ~2.9 GMAC a RoI,
about 10x the backbone's work at 600x900. No GPU was available to measure `--device cuda`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import numpy as np
import torch

from vilbert.detect.bottom_up import BottomUpConfig, build_bottom_up
from vilbert.detect.bottom_up.model import PRECISIONS, RawOutputs
from vilbert.detect.bottom_up.preprocess import preprocess


def photos(count: int) -> list[np.ndarray]:
    try:
        from skimage import data

        pool = [data.coffee(), data.chelsea(), data.astronaut()]
    except ImportError:
        rng = np.random.default_rng(0)
        pool = [rng.integers(0, 255, shape, dtype=np.uint8) for shape in ((400, 600, 3), (300, 451, 3), (512, 512, 3))]
    return [pool[i % len(pool)] for i in range(count)]


def random_model(device: str) -> torch.nn.Module:
    """The released architecture with seeded random weights that keep activations finite."""
    model = build_bottom_up(BottomUpConfig(), device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("conv3.norm.weight"):
                t.fill_(0.2)  # small residual branches: 33 blocks without overflow
            elif t.ndim == 4:
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / t[0].numel()) ** 0.5)
            elif t.ndim == 2 and "anchor" not in name:
                t.copy_(torch.randn(t.shape, generator=g) * (1.0 / t.shape[1]) ** 0.5)
            if "anchor_deltas.weight" in name or "bbox_pred.weight" in name:
                t.mul_(0.01)  # boxes near their anchors / proposals, as a trained model's
            if name == "backbone.stem.conv1.weight":
                t.mul_(0.01)  # pixels are ~100: keeps activations O(10), finite in fp16
    return model.to(device).eval()


class Timer:
    def __init__(self, device: torch.device) -> None:
        self.device, self.totals = device, {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@torch.no_grad()
def run_batch(model, images, timer: Timer, precision: str) -> int:
    """detect() step by step, each stage timed; returns the number of regions kept."""
    dtype = PRECISIONS[precision]
    amp = torch.autocast(model.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    with timer("preprocess"):
        batch = preprocess(images, model.config, model.device)
    with amp:
        with timer("backbone"):
            feats = model.backbone(batch.tensor.contiguous(memory_format=model.memory_format))
        with timer("rpn"):
            proposals = model.proposal_generator(feats, batch.sizes)
        with timer("roi_heads"):
            pooled = model.roi_heads(feats, proposals, model.roi_chunk, model.memory_format)
            logits = model.roi_heads.box_predictor(pooled)
    raw = RawOutputs(proposals, pooled.float(), *(t.float() for t in logits))
    with timer("selection"):
        dets = model.postprocess(raw, batch)
    return sum(len(d) for d in dets)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    ap.add_argument("--roi-chunk", type=int, default=64, help="RoIs through res5 at a time (0 = all)")
    ap.add_argument("--channels-last", action="store_true", help="NHWC convolutions (model.set_channels_last)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = random_model(args.device)
    model.roi_chunk = args.roi_chunk or None
    if args.channels_last:
        model.set_channels_last()
    images = photos(args.images + args.batch_size)
    timer = Timer(model.device)
    run_batch(model, images[: args.batch_size], Timer(model.device), args.precision)  # warm-up
    timer.totals.clear()
    regions, start = 0, time.perf_counter()
    for i in range(args.batch_size, len(images), args.batch_size):
        regions += run_batch(model, images[i:i + args.batch_size], timer, args.precision)
    wall = time.perf_counter() - start
    n = len(images) - args.batch_size
    layout = "channels_last" if args.channels_last else "NCHW"
    print(f"bottom-up R101-C4 at {model.config.min_size}/{model.config.max_size} px, device {args.device}, "
          f"{args.precision}, {layout}, batch {args.batch_size}, {args.threads} threads, {n} images, load {os.getloadavg()[0]:.1f}")
    print(f"  {n / wall:.3f} images/s ({wall / n:.2f} s an image, {regions / n:.0f} regions an image)")
    total = sum(timer.totals.values())
    for name, secs in timer.totals.items():
        print(f"  {name:<10} {secs / n:7.3f} s/image  {100 * secs / total:5.1f} %")
    print(f"  backbone share {100 * timer.totals['backbone'] / total:.1f} % "
          f"(RoI heads: RoIPool + res5 on {model.config.rpn_post_nms_top_k} proposals an image)")


if __name__ == "__main__":
    main()
