"""The demo's stages one at a time against `--jobs N` (N at a time, each in a process of its own),
both at the same torch threads per stage, interleaved, on the same stages of a finished demo.

    python benchmarks/bench_demo_jobs.py --demo runs/demo --work runs/bench_jobs --threads 1 --jobs 2

`--demo` is a finished `vilbert demo` folder made with today's default sizes: its world, features
and pretrained models are linked (read, never written) and their stage markers copied, so each arm
runs only the `--stages` (default: the four fine-tunes of the two pretrained rows on VQA and VCR)
into a fresh folder under `--work`. Each round runs arm A then arm B (odd rounds) or B then A (even
rounds) so that drift falls on both; it prints each arm's wall seconds, the speed-up of B over A
and whether every stage's metrics are equal in the two arms (they must be: each stage runs with
the same thread count in both). A stage's numbers do depend on its thread count, so against the
default demo (every thread, one stage at a time) `--threads 1 --jobs 2` is another table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from vilbert.demo.plan import build_plan
from vilbert.demo.sizes import default_sizes
from vilbert.demo.stages import StageRunner
from vilbert.demo.steps import link_demo_parts
from vilbert.demo.worker import command

DEFAULT_STAGES = [f"{row}-{task}" for task in ("vqa", "vcr") for row in ("vilbert", "single_stream")]
LINKED = ("world", "features.lmdb", "runs/pretrain")
REUSED = ("world", "features", "pretrain-vilbert", "pretrain-single_stream")


def run_arm(demo: Path, out: Path, stages: list[str], jobs: int, threads: int) -> tuple[float, dict]:
    """Run `stages` of the default demo into a fresh `out` (the demo's earlier stages reused)."""
    shutil.rmtree(out, ignore_errors=True)
    (out / "stages").mkdir(parents=True)
    link_demo_parts(demo, out, LINKED)
    for name in REUSED:
        shutil.copy(demo / "stages" / f"{name}.json", out / "stages" / f"{name}.json")
    sizes = default_sizes()
    plan = build_plan(out, sizes)
    chosen = [s for s in plan.stages if s.name in REUSED or s.name in stages]
    missing = sorted(set(stages) - {s.name for s in chosen})
    if missing:
        raise SystemExit(f"the demo's plan has no stages {missing}")
    with open(os.devnull, "w") as quiet:
        runner = StageRunner(out, stream=quiet)
        t0 = time.perf_counter()
        runner.run(chosen, jobs=jobs, launch=lambda name: command(str(out), name, sizes, threads, ablations=False))
        seconds = time.perf_counter() - t0
    return seconds, {name: runner.results[name]["metrics"] for name in stages}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--stages", nargs="+", default=DEFAULT_STAGES)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads of every stage, in both arms")
    p.add_argument("--jobs", type=int, default=2, help="arm B's stages at once")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{len(args.stages)} stages of {args.demo}, {args.threads} thread(s) each: A one at a time, "
          f"B {args.jobs} at a time; load {os.getloadavg()[0]:.1f}")
    totals = {"A": 0.0, "B": 0.0}
    same = True
    for k in range(args.rounds):
        order = ("A", "B") if k % 2 == 0 else ("B", "A")
        metrics = {}
        for arm in order:
            jobs = 1 if arm == "A" else args.jobs
            seconds, metrics[arm] = run_arm(args.demo, args.work / f"round{k}-{arm}", args.stages, jobs, args.threads)
            totals[arm] += seconds
            print(f"round {k + 1} {arm}: {seconds:.1f} s", flush=True)
        same &= metrics["A"] == metrics["B"]
        print(f"round {k + 1}: B {metrics['A'] == metrics['B'] and 'equals' or 'DIFFERS FROM'} A in every metric")
    print(f"A {totals['A']:.1f} s, B {totals['B']:.1f} s over {args.rounds} rounds: B is {totals['A'] / totals['B']:.2f}x "
          f"A's speed; metrics {'identical' if same else 'NOT identical'} ({json.dumps(sorted(args.stages))})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
