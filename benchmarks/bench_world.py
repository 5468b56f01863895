"""Generation speed of the world (images/s, all annotations included) and its text-only baseline.

    python benchmarks/bench_world.py --images 3000 --workers 2

prints images/s for the whole `generate_world` call (rendering, PNG encoding, annotations, file
writing), the extrapolated time for 50,000 images, the output size per image, and the accuracy of
text-only guessers against the per-type majority answer on the world's own VQA questions.
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
    args = p.parse_args()
    from vilbert.world import generate_world

    out = Path(tempfile.mkdtemp(prefix="bench_world_"))
    try:
        start, cpu0 = time.perf_counter(), _cpu_seconds()
        generate_world(out, args.images, seed=0, workers=args.workers, image_size=args.image_size, progress=False)
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


if __name__ == "__main__":
    main()
