"""`vilbert finetune`: train a model on one downstream task, from a pretrained directory or from scratch.

    vilbert finetune --task vqa --data WORLD --init PRETRAIN_RUN/model --out RUN
    vilbert finetune --task vcr --data WORLD --preset small --text-init minilm --out RUN

Writes the trainer's output under RUN (checkpoints, logs, curves), the final model directory at
RUN/model (config.json with the task's heads, e.g. VQA's answer list, + model.safetensors), and
RUN/metrics.json with the val and test metrics. Defaults (batch size, lr, epochs, text length)
follow the original's recipe for the task; task-specific options go in `--option key=value`.
See `vilbert.pipelines.finetune`.
"""

from __future__ import annotations

import argparse
import json
import sys

from vilbert.cli.common import (
    add_data_args,
    add_model_args,
    add_runtime_args,
    add_training_args,
    model_source,
    run_command,
    task_options,
    train_config,
)
from vilbert.pipelines.finetune import FinetuneRun, finetune

PROG = "vilbert finetune"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run directory")
    add_data_args(p)
    add_model_args(p)
    p.add_argument("--reinit", action="append", default=[], metavar="MODULE[,MODULE]",
                   help="start these modules afresh before training, e.g. text_pooler,image_pooler "
                        "(seeded by --seed; repeatable)")
    add_training_args(p, text_lr_scale=1.0)
    add_runtime_args(p)
    return p


def finetune_run(args: argparse.Namespace) -> FinetuneRun:
    reinit = tuple(name for value in args.reinit for name in value.split(",") if name)
    return FinetuneRun(task=args.task, data=args.data, out=args.out, model=model_source(args),
                       features=args.features, options=task_options(args), reinit=reinit,
                       text_lr_scale=args.text_lr_scale, train=train_config(args, args.task), resume=args.resume)


def run(args: argparse.Namespace) -> None:
    result = finetune(finetune_run(args))
    if result.metrics:  # rank 0
        print(json.dumps(result.metrics, indent=2))


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, build_parser(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
