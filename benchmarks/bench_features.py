"""Feature extraction throughput (images/s) and store read speed on this CPU.

    python benchmarks/bench_features.py [--images 48] [--threads 2] [--sizes 320 384 448]

Images are generated scenes like the world's (300x300, 24 boxes each, COCO-style proposals).
Each size runs the whole pipeline (decode, backbone, RoIAlign, classifier, LMDB write); the
first batch is a warm-up. Store reads: `FeatureStore.get_many` of 64 ids (model-ready tensors).
The machine is shared: print `uptime` beside the figures; a load above 2 makes them meaningless.

Last figures (2 threads, batch 8): quiet machine (load < 2, first session hour): backbone alone
at 384 ~14 images/s with channels_last (~7 without). Loaded machine (load 12.8 on 2 CPUs):
end to end 3.2 images/s at 224 (8.2 per CPU-second), 1.0 at 384 (2.8 per CPU-second); store
reads ~3,000 images/s (get_many, 64 ids, 37 x 1280 float32 + 1000-class cls_prob).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import lmdb
import numpy as np
import torch
from PIL import Image, ImageDraw

from vilbert.features.backbone import load_backbone
from vilbert.features.boxes import read_coco_boxes
from vilbert.features.extract import ExtractConfig, extract_features
from vilbert.features.store import CHECKSUMMED, FLAGS_OFFSET, IMAGE_PREFIX, FeatureStore


def make_images(root: Path, count: int, side: int = 300, boxes: int = 24) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for i in range(count):
        img = Image.new("RGB", (side, side), tuple(int(v) for v in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(5):
            x, y, w, h = (int(v) for v in rng.integers([0, 0, 20, 20], [240, 240, 80, 80]))
            draw.rectangle([x, y, x + w, y + h], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        img.save(root / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": side, "height": side})
        for _ in range(boxes):
            x, y, w, h = (float(v) for v in rng.integers([0, 0, 16, 16], [250, 250, 120, 120]))
            annotations.append({"id": len(annotations), "image_id": i, "bbox": [x, y, min(w, side - x), min(h, side - y)]})
    (root / "proposals.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return root


def bench_extract(root: Path, size: int, batch: int, backbone) -> tuple[float, float]:
    """(images per wall second, images per CPU second); the second is steadier on a shared machine."""
    entries = read_coco_boxes(root / "proposals.json", root / "images")
    config = ExtractConfig(image_size=size, batch_size=batch)
    warm = root / f"warm{size}"
    extract_features(entries[:batch], warm, config, backbone=backbone, progress=False)
    cpu = time.process_time()
    report = extract_features(entries, root / f"store{size}", config, backbone=backbone, progress=False)
    return report.images_per_second, report.written / (time.process_time() - cpu)


@torch.inference_mode()
def bench_backbone(size: int, batch: int, backbone, rounds: int = 3) -> float:
    """Backbone forward alone (the floor of the pipeline's cost), images/s."""
    pixels = torch.rand(batch, 3, size, size)
    backbone(pixels)
    start = time.perf_counter()
    for _ in range(rounds):
        backbone(pixels)
    return rounds * batch / (time.perf_counter() - start)


def bench_reads(store_path: Path, batch: int = 64, rounds: int = 20) -> float:
    store = FeatureStore(store_path)
    ids = store.ids()
    rng = np.random.default_rng(0)
    store.get_many(ids[:batch])
    start = time.perf_counter()
    for _ in range(rounds):
        store.get_many(rng.choice(ids, batch).tolist())
    return rounds * batch / (time.perf_counter() - start)


def unverified_copy(store_path: Path, out: Path) -> Path:
    """The same records with the checksum flag cleared: reads that skip verification, i.e. the
    store's cost before records carried checksums."""
    with lmdb.open(str(store_path), readonly=True, lock=False) as src, \
            lmdb.open(str(out), map_size=1 << 34) as dst, src.begin() as read, dst.begin(write=True) as write:
        for key, value in read.cursor():
            if key.startswith(IMAGE_PREFIX):
                value = bytearray(value)
                value[FLAGS_OFFSET] &= ~CHECKSUMMED
                value = bytes(value)
            write.put(key, value)
    return out


def compare_reads(store_path: Path, rounds: int = 5) -> tuple[float, float]:
    """Interleaved rounds of reads with and without checksum verification (images/s, best of each)."""
    plain = unverified_copy(store_path, store_path.with_name(store_path.name + "_plain"))
    verified, unverified = [], []
    for _ in range(rounds):
        verified.append(bench_reads(store_path))
        unverified.append(bench_reads(plain))
    return max(verified), max(unverified)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 384, 448])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backbone = load_backbone()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_images(Path(tmp), args.images)
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"{args.images} images 300x300, 24 boxes each, batch {args.batch_size}, {args.threads} threads")
        for size in args.sizes:
            rate, per_cpu = bench_extract(root, size, args.batch_size, backbone)
            alone = bench_backbone(size, args.batch_size, backbone)
            print(f"  image_size {size}: {rate:6.1f} images/s end to end ({args.images / rate:.1f} s), "
                  f"{per_cpu:5.1f} images per CPU-second; backbone alone {alone:6.1f} images/s")
        verified, unverified = compare_reads(root / f"store{args.sizes[0]}")
        print(f"  store reads (get_many, 64 ids, float32): {verified:8.0f} images/s with checksums verified, "
              f"{unverified:8.0f} without ({verified / unverified:.2f}x; interleaved, best of 5)")


if __name__ == "__main__":
    main()
