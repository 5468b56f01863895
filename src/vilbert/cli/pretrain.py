"""`vilbert pretrain`: train ViLBERT on image-caption pairs (masked words, masked regions, alignment).

    vilbert pretrain --data WORLD_OR_CAPTIONS_DIR --features STORE --out RUN_DIR [--preset small]
    torchrun --nproc_per_node N -m vilbert pretrain ...   (DDP; the same flags)

Writes RUN_DIR/checkpoints/ (atomic, `--resume` continues exactly), train_log.csv, eval_log.csv,
tensorboard/, curves.png, pretrain_run.json and, when the run is complete, RUN_DIR/model for
`vilbert finetune --init`. See `vilbert.pipelines.pretrain`.
"""

from __future__ import annotations

import argparse
import sys

from vilbert.cli.common import (
    add_data_args,
    add_model_args,
    add_runtime_args,
    add_training_args,
    model_source,
    run_command,
    train_config,
)
from vilbert.pipelines.pretrain import PretrainResult, PretrainRun, pretrain
from vilbert.tasks import TaskData
from vilbert.tasks.pretrain import RECIPE
from vilbert.train.logging import EVAL_CSV, TRAIN_CSV

PROG = "vilbert pretrain"
DEFAULT_PRESET = "small"
RUN_DEFAULTS = PretrainRun(data="", out="")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="world directory (with captions/) or a folder of {split}.tsv caption files")
    p.add_argument("--out", required=True, help="run directory (checkpoints, logs, final model)")
    add_data_args(p, task=False)
    add_model_args(p, saved=False)
    add_training_args(p, text_lr_scale=RUN_DEFAULTS.text_lr_scale)
    p.add_argument("--alignment-weight", type=float, default=RUN_DEFAULTS.alignment_weight,
                   help="weight of the alignment loss (1: the paper's equal weights; short runs need more, "
                        "see PretrainTask) (default %(default)s)")
    p.add_argument("--contrastive-weight", type=float, default=RUN_DEFAULTS.contrastive_weight,
                   help="weight of the dual-encoder contrastive loss that trains retrieval's first stage "
                        "(0: the paper's three losses) (default %(default)s)")
    add_runtime_args(p)
    return p


def run(args: argparse.Namespace) -> None:
    result = pretrain(PretrainRun(
        data=args.data, out=args.out, features=args.features, model=model_source(args, DEFAULT_PRESET),
        text_lr_scale=args.text_lr_scale, alignment_weight=args.alignment_weight,
        contrastive_weight=args.contrastive_weight,
        max_text_length=args.max_text_length or RECIPE.max_text_length,
        max_regions=args.max_regions or TaskData.max_regions,
        train=train_config(args, "pretrain"), resume=args.resume,
    ))
    if result.main_process:
        summary(result, args.out)


def summary(result: PretrainResult, out: str) -> None:
    keys = ("loss", "masked_word_loss", "masked_region_loss", "alignment_loss", "alignment_acc", "contrastive_loss")
    last = result.last_train
    train_part = ", ".join(f"{k} {float(last[k]):.4f}" for k in keys if last.get(k))
    t = result.train
    print(f"{PROG}: step {t.step}/{t.total_steps} (epoch {t.epoch}); last step: {train_part}")
    for split, metrics in t.metrics.items():
        print(f"  {split}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    if result.model_dir is not None:
        print(f"  model: {result.model_dir}  (vilbert finetune --init {result.model_dir})")
    else:
        print("  stopped early; continue with the same command and --resume")
    print(f"  checkpoint: {t.checkpoint}")
    print(f"  logs: {out}/{TRAIN_CSV}, {out}/{EVAL_CSV}, {out}/tensorboard, curves: {out}/curves.png")


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, build_parser(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
