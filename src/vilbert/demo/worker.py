"""One stage of a demo plan in a process of its own: what `vilbert demo --jobs N` starts for each
stage it runs side by side. Not a command for users; the runner gives it the exact sizes.

    python -m vilbert.demo.worker OUT STAGE --sizes JSON --threads K [--ablations]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from vilbert.demo.plan import build_plan
from vilbert.demo.sizes import DemoSizes
from vilbert.demo.stages import StageError, StageRunner


def command(out: str, stage: str, sizes: DemoSizes, threads: int, ablations: bool) -> list[str]:
    """The command that runs `stage` of the demo in `out` with `threads` torch threads."""
    return [sys.executable, "-m", "vilbert.demo.worker", str(out), stage, "--sizes", json.dumps(sizes.to_dict()),
            "--threads", str(threads), *(["--ablations"] if ablations else [])]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vilbert.demo.worker", description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("stage")
    p.add_argument("--sizes", required=True, help="the demo's sizes as JSON (DemoSizes.to_dict)")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--ablations", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    plan = build_plan(args.out, DemoSizes.from_dict(json.loads(args.sizes)), args.ablations)
    stage = next((s for s in plan.stages if s.name == args.stage), None)
    if stage is None:
        print(f"{p.prog}: the plan has no stage {args.stage!r}", file=sys.stderr)
        return 2
    try:
        StageRunner(plan.out).run_here(stage)
    except StageError as err:
        print(f"{p.prog}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
