"""`vilbert evaluate`: a saved model's metrics on one task split, printed and written as JSON.

    vilbert evaluate --task vqa --checkpoint RUN/model --data WORLD --split val --out metrics.json

The checkpoint directory alone describes the model and its heads (VQA's answer list included).
See `vilbert.pipelines.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import sys

from vilbert.cli.common import add_data_args, add_runtime_args, run_command, task_options
from vilbert.io.atomic import write_json
from vilbert.pipelines.evaluate import EvaluateRun, evaluate
from vilbert.pipelines.models import ModelSource

PROG = "vilbert evaluate"
DEFAULTS = EvaluateRun(task="", data="", model=ModelSource(preset="tiny"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a saved model directory (config.json + model.safetensors)")
    p.add_argument("--split", default=DEFAULTS.split, help="split to score (train, val, test; default %(default)s)")
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="rows per forward (default %(default)s)")
    p.add_argument("--out", default=None, help="also write the result to this JSON file")
    add_data_args(p)
    add_runtime_args(p)
    return p


def run(args: argparse.Namespace) -> None:
    result = evaluate(EvaluateRun(task=args.task, data=args.data, model=ModelSource(directory=args.checkpoint),
                                  split=args.split, features=args.features, options=task_options(args),
                                  batch_size=args.batch_size, device=args.device))
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(args.out, result)


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, build_parser(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
