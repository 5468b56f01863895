"""`vilbert demo`: generate the world, extract its features, pretrain, fine-tune every task,
evaluate, and print a results table shaped like the paper's Table 1.

    vilbert demo [--out vilbert-demo] [--quick] [--ablations] [--seeds N [--vary-pretraining]]
                 [--finetune-steps vqa=960] [--extra-test-images N] [--jobs N]

Everything goes under --out (world/, features.lmdb, runs/, logs/, results.md/.json/.png). A rerun
reuses every finished stage and resumes an interrupted one.
"""

from __future__ import annotations

import argparse
import sys

from vilbert.cli.common import JobFailed, run_command
from vilbert.demo import StageError, default_sizes, quick_sizes, run_demo
from vilbert.demo.sizes import with_overrides

PROG = "vilbert demo"


def _task_steps(text: str) -> tuple[str, int]:
    task, sep, steps = text.partition("=")
    if not sep or not steps.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected TASK=N (e.g. vqa=960), got {text!r}")
    return task.strip(), int(steps)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="vilbert-demo", help="output folder (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="tiny world and tiny model: a smoke test of every stage")
    p.add_argument("--ablations", action="store_true",
                   help="also the co-attention depth (2/4/6 layers) and pretraining-data (0/25/50/100%%) tables")
    p.add_argument("--images", type=int, default=None, help="world size (overrides the default sizes)")
    p.add_argument("--pretrain-steps", type=int, default=None, help="pretraining steps (overrides the default sizes)")
    p.add_argument("--extra-test-images", type=int, default=None,
                   help="test images beyond the world's split (default 480, so 640 test images; --quick 0; 0 gives the 160 of "
                        "demo folders made before 2026-12-03); training is the same either way")
    p.add_argument("--finetune-steps", action="append", type=_task_steps, default=[], metavar="TASK=N",
                   help="fine-tune TASK (vqa, vcr, refer, retrieval) for N steps in every row (repeatable); "
                        "vqa=960 lifts the world's VQA above 60%% (16.5 minutes more on 2 cores)")
    p.add_argument("--seeds", type=int, default=None,
                   help="fine-tune every row and task at this many seeds; a claim is decided by its margin at each "
                        "seed (seed k of one row against seed k of the other) against those margins' spread")
    p.add_argument("--vary-pretraining", action="store_true",
                   help="with --seeds N, pretrain at each seed too (seed k of a pretrained row starts from "
                        "pretraining k): the spread then covers how pretraining fell (N-1 more pretrainings per model)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: write the tables from the stages finished so far")
    p.add_argument("--jobs", type=int, default=1,
                   help="run up to this many stages at once, each in its own process with --threads threads "
                        "(the same table as one at a time with those threads); e.g. --threads 2 --jobs 8 on 16 "
                        "cores (default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--heartbeat", type=float, default=30.0, help="seconds between progress lines inside a stage")
    return p


def run(args: argparse.Namespace) -> None:
    sizes = quick_sizes() if args.quick else default_sizes()
    try:
        sizes = with_overrides(sizes, finetune_steps=dict(args.finetune_steps), images=args.images,
                               extra_test_images=args.extra_test_images,
                               pretrain_steps=args.pretrain_steps, seeds=args.seeds,
                               vary_pretraining=args.vary_pretraining or None)
    except ValueError as err:
        raise JobFailed(str(err)) from err
    if args.jobs < 1:
        raise JobFailed(f"--jobs must be 1 or more, got {args.jobs}")
    try:
        run_demo(args.out, sizes, ablations=args.ablations, heartbeat_s=args.heartbeat, report_only=args.report_only,
                 jobs=args.jobs)
    except StageError as err:
        raise JobFailed(str(err)) from err


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, build_parser(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
