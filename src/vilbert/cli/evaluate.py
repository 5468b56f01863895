"""`vilbert evaluate`: a saved model's metrics on one task split, printed and written as JSON.

    vilbert evaluate --task vqa --checkpoint RUN/model --data WORLD --split val --out metrics.json

    vilbert evaluate --task retrieval --checkpoint FT/model --data WORLD --split test --rerank-top 32 --exhaustive

The checkpoint directory alone describes the model and its heads (VQA's answer list included).
`--rerank-top K` ranks retrieval in two stages (embeddings first, then ViLBERT on each query's K
best) and reports the first stage alone and the two-stage result, each with its wall time and
the ViLBERT pairs it scored; `--exhaustive` adds scoring every pair. See `vilbert.pipelines.evaluate`.
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
    p.add_argument("--rerank-top", type=int, default=DEFAULTS.rerank_top, metavar="K",
                   help="retrieval: rank by the first stage's embeddings, then re-score each query's K best "
                        "with ViLBERT (default: score every pair)")
    p.add_argument("--exhaustive", action="store_true",
                   help="with --rerank-top: also score every pair and report both, with their wall times")
    p.add_argument("--out", default=None, help="also write the result to this JSON file")
    p.add_argument("--write-predictions", default=None, metavar="JSON",
                   help="also write the predictions: VQA's official results format [{question_id, answer}], "
                        "RefCOCO+'s chosen boxes, retrieval's rankings")
    add_data_args(p)
    add_runtime_args(p)
    return p


def run(args: argparse.Namespace) -> None:
    result = evaluate(EvaluateRun(task=args.task, data=args.data, model=ModelSource(directory=args.checkpoint),
                                  split=args.split, features=args.features, options=task_options(args),
                                  batch_size=args.batch_size, device=args.device,
                                  rerank_top=args.rerank_top, exhaustive=args.exhaustive,
                                  predictions=args.write_predictions))
    print(json.dumps(result, indent=2))
    if args.rerank_top is not None:
        print(ranking_table(result["metrics"]), file=sys.stderr)
    if args.out:
        write_json(args.out, result)


def ranking_table(metrics: dict[str, float]) -> str:
    """The two-stage report as a table: each ranking's R@1/5/10 both ways, wall time, pairs scored."""
    rows = [("first stage", "first_stage_"), (f"two-stage, k = {int(metrics['rerank_top'])}", "")]
    if "exhaustive_seconds" in metrics:
        rows.append(("exhaustive", "exhaustive_"))
    lines = [f"{'ranking':<20} {'image R@1/5/10':>18} {'text R@1/5/10':>18} {'seconds':>9} {'ViLBERT pairs':>14}"]
    for name, prefix in rows:
        ir = " / ".join(f"{100 * metrics[f'{prefix}ir_r{k}']:.1f}" for k in (1, 5, 10))
        tr = " / ".join(f"{100 * metrics[f'{prefix}tr_r{k}']:.1f}" for k in (1, 5, 10))
        lines.append(f"{name:<20} {ir:>18} {tr:>18} {metrics[f'{prefix}seconds']:>9.2f} "
                     f"{int(metrics[f'{prefix}pairs']):>14,}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, build_parser(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
