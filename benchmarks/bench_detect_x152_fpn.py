"""x152-fpn detector throughput: images/s of `detect` at the extraction test size (short side
800, long side at most 1333), batched, and the share of each stage (backbone = ResNeXt-152 +
FPN; RPN; box head = RoIAlign + fc6/fc7/classes; selection = per-class NMS over 1600 classes).

    python benchmarks/bench_detect_x152_fpn.py [--images 4] [--batch-size 2] [--threads 2]
        [--device cpu|cuda] [--amp none|fp16|bf16] [--hw 480 640]

The architecture is the full-size one with random weights (no download here); the class
layer is rescaled on the warm-up batch so the class scores vary across regions and peak like a
trained detector's (the selection's cost depends on that). Photos: scikit-image's coffee/chelsea/astronaut/rocket resized to
--hw (synthetic noise if scikit-image is absent). The first batch is a warm-up. The machine
may be shared: the script prints the load average beside the figures.

Last figures (`--images 2 --batch-size 2`, 2 threads, CPU, load average 4.5-5.5 on 2 CPUs, so
roughly half the machine): 480x640 photos -> 800x1088 canvas, 0.036 images/s (0.037 per
CPU-second, ~27 CPU-seconds an image); one batch of 2 by stage: backbone 34.9 s (63%), RPN 5.7 s
(10%), box head 13.1 s (24%), selection 1.0 s (2%), preprocessing 0.3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from PIL import Image

from vilbert.detect.x152_fpn import X152FPNConfig, build_x152_fpn
from vilbert.detect.x152_fpn.selection import select_boxes


def photos(count: int, hw: tuple[int, int]) -> list[np.ndarray]:
    try:
        from skimage import data

        sources = [data.coffee(), data.chelsea(), data.astronaut(), data.rocket()]
    except ImportError:  # pragma: no cover - scikit-image is a dev dependency
        rng = np.random.default_rng(0)
        sources = [rng.integers(0, 255, (hw[0], hw[1], 3), dtype=np.uint8)]
    return [
        np.asarray(Image.fromarray(sources[i % len(sources)]).resize((hw[1], hw[0]), Image.BILINEAR))
        for i in range(count)
    ]


def calibrate_classes(model, images) -> None:
    """Random weights give every region nearly the same fc7, hence near-uniform class scores
    over 1601 classes, the selection's worst case. Rescale the class layer from one batch's fc7
    (centred over the regions) so the logits vary by std 3 across regions, peaked like a
    trained detector's."""
    g = torch.Generator().manual_seed(0)
    head = model.roi_heads["box"]
    with torch.no_grad():
        fc6 = torch.cat(model.run_batch(model.preprocess(images)).features)
        fc7 = torch.relu(head.feature_extractor.fc7(fc6))
        layer = head.predictor.cls_score
        weight = torch.randn(layer.weight.shape, generator=g).to(fc7)
        spread = ((fc7 - fc7.mean(0)) @ weight.T).std()
        layer.weight.copy_(weight * (3.0 / spread))
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=g).to(fc7))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def stages(model, images, amp_dtype, device) -> dict[str, float]:
    """Seconds per stage for one batch, mirroring `detect` step by step."""
    c = model.config
    times: dict[str, float] = {}
    t = time.perf_counter()
    batch = model.preprocess(images)
    sync(device)
    times["preprocess"] = time.perf_counter() - t
    use_amp = amp_dtype is not None and device.type != "cpu"
    with torch.no_grad():
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype or torch.float16, enabled=use_amp):
            features = model.backbone(batch.tensor)
        features = [f.float() for f in features]
        sync(device)
        times["backbone"] = time.perf_counter() - t
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype or torch.float16, enabled=use_amp):
            boxes = model.rpn(features, batch.canvas)
        sync(device)
        times["rpn"] = time.perf_counter() - t
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype or torch.float16, enabled=use_amp):
            _, logits = model.roi_heads["box"](features, boxes)
        logits = logits.float().split([len(b) for b in boxes])
        sync(device)
        times["box head"] = time.perf_counter() - t
        t = time.perf_counter()
        for b, lg, s in zip(boxes, logits, batch.scales):
            select_boxes(b / s, torch.softmax(lg, -1), c.num_features, c.nms_threshold, c.confidence_threshold)
        sync(device)
        times["selection"] = time.perf_counter() - t
    return times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", choices=["none", "fp16", "bf16"], default="none")
    ap.add_argument("--hw", type=int, nargs=2, default=(480, 640), help="photo size before the 800-px resize")
    ap.add_argument(
        "--config", help="a config JSON instead of the full size (e.g. the test fixture's, for a smoke run)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp_dtype = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}[args.amp]

    if args.config:
        with open(args.config) as fh:
            data = json.load(fh)
        config = X152FPNConfig.from_dict({**data, "batch_size": args.batch_size})
    else:
        config = X152FPNConfig(batch_size=args.batch_size)
    t = time.perf_counter()
    model = build_x152_fpn(config, device=device)
    what = args.config or "the full-size x152-fpn"
    print(
        f"built {what} ({sum(p.numel() for p in model.state_dict().values()) / 1e6:.0f}M values) "
        f"in {time.perf_counter() - t:.1f} s on {device}, {args.threads} threads, amp {args.amp}"
    )
    images = photos(args.images + args.batch_size, tuple(args.hw))
    warm, timed = images[: args.batch_size], images[args.batch_size :]

    calibrate_classes(model, warm)  # also the warm-up
    sync(device)
    t, cpu = time.perf_counter(), time.process_time()
    dets = model.detect(timed, amp_dtype=amp_dtype)
    sync(device)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    rate = len(timed) / wall
    batch = model.preprocess(timed[: args.batch_size])
    print(
        f"detect: {len(timed)} photos {args.hw[0]}x{args.hw[1]} -> canvas {batch.canvas[0]}x{batch.canvas[1]}, "
        f"batch {args.batch_size}: {rate:.3f} images/s ({wall:.1f} s wall, {len(timed) / cpu:.3f} images per CPU-second); "
        f"{len(dets[0].boxes)} regions x {dets[0].features.shape[1]} each"
    )

    times = stages(model, timed[: args.batch_size], amp_dtype, device)
    total = sum(times.values())
    shares = ", ".join(f"{k} {v:.2f} s ({100 * v / total:.0f}%)" for k, v in times.items())
    print(f"one batch of {args.batch_size} by stage: {shares}")
    print(f"backbone share: {100 * times['backbone'] / total:.0f}%")
    if hasattr(os, "getloadavg"):
        print("load average (1, 5, 15 min): " + ", ".join(f"{v:.1f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
