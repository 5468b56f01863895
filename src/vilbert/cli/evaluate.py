"""`vilbert evaluate`: a saved model's metrics on one task split, printed and written as JSON.

    vilbert evaluate --task vqa --checkpoint RUN/model --data WORLD --split val --out metrics.json

The checkpoint directory alone describes the model and its heads (VQA's answer list included).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from vilbert.cli.finetune import add_task_arguments, check_features, make_task


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vilbert evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_task_arguments(p)
    p.add_argument("--checkpoint", required=True, help="a saved model directory (config.json + model.safetensors)")
    p.add_argument("--split", default="val", help="split to score (train, val, test)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per forward")
    p.add_argument("--out", default=None, help="also write the metrics to this JSON file")
    return p


def evaluate_checkpoint(args: argparse.Namespace) -> dict[str, Any]:
    """Load the checkpoint, check it has the task's heads, and score the split."""
    from vilbert.model import load_pretrained
    from vilbert.train.distributed import resolve_device

    task = make_task(args)
    model = load_pretrained(args.checkpoint, map_location=resolve_device(args.device))
    check_features(model.config, task)
    missing = [h for h in task.required_heads() if h not in model.heads]
    if missing:
        raise ValueError(f"checkpoint {args.checkpoint} has no {missing} head(s) for task {args.task!r} "
                         f"(its heads: {', '.join(model.heads) or 'none'}); fine-tune it on the task first")
    metrics = {k: float(v) for k, v in task.evaluate(model, args.split, batch_size=args.batch_size).items()}
    return {"task": args.task, "split": args.split, "checkpoint": str(args.checkpoint), "metrics": metrics}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = evaluate_checkpoint(args)
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"vilbert evaluate: {err}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from vilbert.io.atomic import write_json

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, result)
    return 0
