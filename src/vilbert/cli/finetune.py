"""`vilbert finetune`: train a model on one downstream task, or on several at once, from a
pretrained directory or from scratch.

    vilbert finetune --task vqa --data WORLD --init PRETRAIN_RUN/model --out RUN
    vilbert finetune --task vcr --data WORLD --preset small --text-init minilm --out RUN
    vilbert finetune --tasks vqa,vcr,refer,retrieval --data WORLD --init PRETRAIN_RUN/model --out MT
    vilbert finetune --task vqa --data WORLD --init MT/model --out RUN      # 12-in-1's best recipe

Writes the trainer's output under RUN (checkpoints, logs, curves), the final model directory at
RUN/model (config.json with the task's heads, e.g. VQA's answer list, + model.safetensors), and
RUN/metrics.json with the val and test metrics. Defaults (batch size, lr, epochs, text length)
follow the original's recipe for the task; task-specific options go in `--option key=value`.
With --tasks (12-in-1), one model with every task's head trains on all of them: each step is one
task's batch (--task-batch-size, default each recipe's), shared by --sampler; each task's loss
is weighted (--loss-weight, default its recipe lr over the smallest, which is the run's --lr);
metrics.json holds every task's metrics prefixed by its name. See `vilbert.pipelines.finetune`
and `vilbert.pipelines.multitask`.
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
from vilbert.pipelines.multitask import MultitaskRun, TaskSpec, multitask
from vilbert.tasks import parse_options
from vilbert.tasks.mixing import SAMPLERS, TaskMix

PROG = "vilbert finetune"
MIX = TaskMix()
MULTITASK_FLAGS = ("task_batch_size", "loss_weight", "task_shares", "sampler", "temperature", "task_tokens")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run directory")
    add_data_args(p, tasks=True)
    add_model_args(p)
    p.add_argument("--reinit", action="append", default=[], metavar="MODULE[,MODULE]",
                   help="start these modules afresh before training, e.g. text_pooler,image_pooler "
                        "(seeded by --seed; repeatable)")
    add_training_args(p, text_lr_scale=1.0)
    add_multitask_args(p)
    add_runtime_args(p)
    return p


def add_multitask_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("several tasks (--tasks)")
    g.add_argument("--task-batch-size", action="append", default=None, metavar="TASK=N[,TASK=N]",
                   help="a task's batch per step (default: --batch-size, else the task's recipe)")
    g.add_argument("--loss-weight", action="append", default=None, metavar="TASK=W[,TASK=W]",
                   help="a task's loss weight (default: its recipe lr over the smallest, as 12-in-1)")
    g.add_argument("--sampler", default=None, choices=SAMPLERS,
                   help=f"how the steps are shared among the tasks (default {MIX.sampler}; shares: --task-shares)")
    g.add_argument("--temperature", type=float, default=None,
                   help=f"--sampler temperature: shares proportional to batches ** (1/T) (default {MIX.temperature})")
    g.add_argument("--task-shares", action="append", default=None, metavar="TASK=S[,TASK=S]",
                   help="--sampler shares: each task's relative share of the steps (e.g. its single-task steps)")
    g.add_argument("--task-tokens", action="store_true",
                   help="a learned token per task after [CLS] (12-in-1's task-specific tokens)")


def _pairs(values: list[str] | None, flag: str, names: list[str], kind: type) -> dict[str, object]:
    """["vqa=32,vcr=8", ...] -> {"vqa": 32, "vcr": 8}; a name that is not among the tasks is named."""
    out: dict[str, object] = {}
    for item in (part for value in values or [] for part in value.split(",") if part):
        name, sep, text = item.partition("=")
        if not sep or name not in names:
            raise ValueError(f"{flag} {item!r}: expected TASK=VALUE with TASK one of {', '.join(names)}")
        try:
            out[name] = kind(text)
        except ValueError as err:
            raise ValueError(f"{flag} {item!r}: {text!r} is not a {kind.__name__}") from err
    return out


def _task_options(args: argparse.Namespace, names: list[str]) -> dict[str, dict]:
    """--option TASK.KEY=VALUE for one task, KEY=VALUE (and the text/region limits) for every task."""
    shared, own = {}, {name: {} for name in names}
    for key, value in parse_options(args.option).items():
        name, sep, option = key.partition(".")
        if sep and name in own:
            own[name][option] = value
        elif sep:
            raise ValueError(f"--option {key}=...: {name!r} is not one of the tasks ({', '.join(names)})")
        else:
            shared[key] = value
    limits = {k: getattr(args, k) for k in ("max_text_length", "max_regions") if getattr(args, k) is not None}
    return {name: {**shared, **limits, **own[name]} for name in names}


def multitask_run(args: argparse.Namespace) -> MultitaskRun:
    names = [n for n in args.tasks.split(",") if n]
    sizes = _pairs(args.task_batch_size, "--task-batch-size", names, int)
    weights = _pairs(args.loss_weight, "--loss-weight", names, float)
    shares = _pairs(args.task_shares, "--task-shares", names, float)
    options = _task_options(args, names)
    specs = tuple(TaskSpec(n, batch_size=sizes.get(n, args.batch_size), loss_weight=weights.get(n),
                           options=options[n]) for n in names)
    mix = TaskMix(sampler=args.sampler or ("shares" if shares else MIX.sampler),
                  temperature=args.temperature if args.temperature is not None else MIX.temperature, shares=shares)
    reinit = tuple(name for value in args.reinit for name in value.split(",") if name)
    return MultitaskRun(tasks=specs, data=args.data, out=args.out, model=model_source(args), features=args.features,
                        mix=mix, task_tokens=args.task_tokens, reinit=reinit, text_lr_scale=args.text_lr_scale,
                        train=train_config(args, names), resume=args.resume)


def finetune_run(args: argparse.Namespace) -> FinetuneRun:
    reinit = tuple(name for value in args.reinit for name in value.split(",") if name)
    return FinetuneRun(task=args.task, data=args.data, out=args.out, model=model_source(args),
                       features=args.features, options=task_options(args), reinit=reinit,
                       text_lr_scale=args.text_lr_scale, train=train_config(args, args.task), resume=args.resume)


def run(args: argparse.Namespace) -> None:
    if args.tasks is None:
        given = [f"--{k.replace('_', '-')}" for k in MULTITASK_FLAGS if getattr(args, k) not in (None, False)]
        if given:
            raise ValueError(f"{', '.join(given)} apply to several tasks trained together (--tasks), not --task")
        result = finetune(finetune_run(args))
    else:
        result = multitask(multitask_run(args))
    if result.metrics:  # rank 0
        print(json.dumps(result.metrics, indent=2))


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, build_parser(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
