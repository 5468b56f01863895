"""Does multi-task fine-tuning help on the demo's world? One model fine-tuned on the four tasks at
once (12-in-1) against the demo's four single-task fine-tunes, from the same pretrained ViLBERT,
with the same total number of steps, at several seeds.

    python benchmarks/bench_multitask.py --demo runs/demo --out runs/bench_multitask --seeds 0 1 2

`--demo` is a finished `vilbert demo` folder (its world/, features.lmdb and
runs/pretrain/vilbert/model are read, never written: OUT links to them, and to its finished seed-0
fine-tunes, which are reused). Single-task runs are the demo's own stage (`vilbert.demo.steps.Steps.finetune`: its steps, batch sizes, rates, VQA's fresh
poolers, the text stream at a tenth of the rate, seed = the demo's + k). Each multi-task variant
is the demo's multi-task stage (`Steps.multitask_run`, the `--ablations` row) and trains one model for the sum of the single-task steps, each step one task's batch of that task's
single-task batch size, the same rates and text-stream scale, then scores every task on the same
test split. Variants:

    shares         each task gets exactly its single-task number of steps (80/50/80/50), interleaved
    round_robin    12-in-1's cycle: the same number of steps for every task (65 each)
    ...+reinit     also starts the shared poolers afresh (the demo does so for VQA alone)
    ...+tokens     with task tokens (a learned token per task after [CLS])

Finished runs are reused (OUT/runs/...), so a rerun only prints. The table shows each cell as the
mean ± sample std over the seeds, then each variant's difference from single-task per seed.

`--val-every N` also scores every task on the validation split every N steps of the multi-task
runs (evaluation does not change the training: every step reseeds its random draws) and prints
what 12-in-1's stop-and-go rule (its MultiTaskStopOnPlateau: a task whose validation score has not
risen by 0.1% over its best for two evaluations in a row trains only every 4th round until it falls
0.5% below its best) would have done with those curves.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from vilbert.demo.results import COLUMNS
from vilbert.demo.rows import MAIN_ROWS
from vilbert.demo.sizes import TASKS, default_sizes
from vilbert.demo.steps import Steps, link_demo_parts
from vilbert.pipelines import MultitaskRun
from vilbert.tasks.multitask import metrics_by_task

VILBERT_ROW = next(r for r in MAIN_ROWS if r.key == "vilbert")
LINKED = ("world", "features.lmdb", "runs/pretrain/vilbert")
SEED0_RUNS = tuple(f"runs/vilbert/{task}" for task in TASKS)  # the demo's own single-task fine-tunes, if finished
VARIANTS = ("shares", "round_robin", "shares+reinit", "shares+tokens", "round_robin+reinit")
TABLE = [c for c in COLUMNS if c[1] in TASKS]


def link_demo(demo: Path, out: Path) -> None:
    """OUT/world, OUT/features.lmdb and OUT/runs/pretrain/vilbert point into the finished demo."""
    link_demo_parts(demo, out, LINKED)
    # finished runs are only read (a rerun of a finished run reuses it)
    link_demo_parts(demo, out, [name for name in SEED0_RUNS if finished(demo / name)])


def finished(path: Path) -> dict[str, Any] | None:
    metrics = path / "metrics.json"
    if metrics.is_file():
        data = json.loads(metrics.read_text())
        if data.get("finished"):
            return data
    return None


def single(steps: Steps, task: str, seed: int) -> dict[str, float]:
    """The demo's single-task fine-tune of the pretrained ViLBERT (its test metrics)."""
    done = finished(steps.run_dir(VILBERT_ROW, task, seed))
    if done is None:
        return steps.finetune(VILBERT_ROW, task, seed)["metrics"]
    return done[steps.sizes.eval_split]


def multitask_run(steps: Steps, variant: str, seed: int, out: Path, val_every: int = 0) -> MultitaskRun:
    """The demo's multi-task run (`Steps.multitask_run`, as `vilbert demo --ablations` trains it)
    with this variant's sampler, task tokens and poolers."""
    sampler, *extras = variant.split("+")
    return steps.multitask_run(VILBERT_ROW, seed, out=out, sampler=sampler, task_tokens="tokens" in extras,
                               reinit_poolers="reinit" in extras, val_every=val_every)


def multi(steps: Steps, variant: str, seed: int, val_every: int) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    out = multi_dir(steps, variant, seed)
    done = finished(out)
    if done is None:
        result = steps.multitask(multitask_run(steps, variant, seed, out, val_every))
        return result["metrics"], result["steps_per_task"]
    return metrics_by_task(done[steps.sizes.eval_split], TASKS), done["steps_per_task"]


def multi_dir(steps: Steps, variant: str, seed: int) -> Path:
    return steps.out / "runs" / f"multitask-{variant}" / f"seed{seed}"


# 12-in-1's MultiTaskStopOnPlateau as train_tasks.py builds it: mode max, patience 1, threshold 1e-3
# and continue_threshold 5e-3 (both relative), cooldown 1; a stopped task trains every 4th round.
PATIENCE, THRESHOLD, CONTINUE, COOLDOWN = 1, 1e-3, 5e-3, 1


def stop_and_go(scores: list[float]) -> list[bool]:
    """After each evaluation, whether the rule has the task stopped."""
    best, bad, cooldown, stopped, out = None, 0, 0, False, []
    for score in scores:
        if best is None or score > best * (1 + THRESHOLD):
            best, bad = score, 0
        else:
            bad += 1
        if cooldown > 0:
            cooldown, bad = cooldown - 1, 0
        if bad > PATIENCE:
            stopped, cooldown, bad = True, COOLDOWN, 0
        elif stopped and score < best * (1 - CONTINUE):
            stopped, cooldown, bad = False, COOLDOWN, 0
        out.append(stopped)
    return out


STOP_METRIC = {"vqa": "accuracy", "vcr": "q_ar", "refer": "accuracy", "retrieval": "ir_r1"}


def print_stop_and_go(steps: Steps, variants: list[str], seeds: list[int]) -> None:
    """Each task's validation curve in the multi-task runs, and when the rule would stop it."""
    print("\nvalidation curves (step: score, * = stop-and-go would have the task stopped after it)")
    for variant in variants:
        for seed in seeds:
            log = multi_dir(steps, variant, seed) / "eval_log.csv"
            if not log.is_file():
                continue
            rows = [r for r in csv.DictReader(log.open()) if r.get("val/vqa/accuracy")]
            for task, metric in STOP_METRIC.items():
                scores = [100 * float(r[f"val/{task}/{metric}"]) for r in rows]
                marks = stop_and_go(scores)
                curve = "  ".join(f"{r['step']}: {v:.1f}{'*' if m else ''}" for r, v, m in zip(rows, scores, marks))
                print(f"  {variant} seed {seed} {task} {metric}: {curve}")


def cells(per_task: dict[str, dict[str, float]]) -> list[float]:
    return [100 * per_task[task][key] for _, task, key in TABLE]


def mean_std(values: list[float]) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


Rows = dict[str, dict[int, list[float]]]  # row name -> seed -> the table's cells
SINGLE = "single-task (4 models)"


def print_table(rows: Rows, steps: dict[str, dict[str, int]]) -> None:
    head = "| model | seeds | " + " | ".join(c[0] for c in TABLE) + " |"
    rule = "| --- | --- |" + " ---: |" * len(TABLE)

    def line(name: str, runs: dict[int, list[float]]) -> str:
        cols = [mean_std([r[i] for r in runs.values()]) for i in range(len(TABLE))]
        return f"| {name} | {','.join(map(str, runs))} | " + " | ".join(cols) + " |"

    print("\ntest split, mean ± sample std over fine-tuning seeds (one pretrained model)\n")
    print(head, rule, sep="\n")
    for name, runs in rows.items():
        print(line(name, runs))
    print("\nmulti-task minus single-task at the same seed, mean ± sample std\n")
    print(head, rule, sep="\n")
    for name, runs in rows.items():
        if name != SINGLE:
            common = {k: [a - b for a, b in zip(v, rows[SINGLE][k])] for k, v in runs.items() if k in rows[SINGLE]}
            print(line(name, common))
    print("\nper seed:")
    for name, runs in rows.items():
        for seed, r in runs.items():
            print(f"  {name:34s} seed {seed}: " + "  ".join(f"{v:5.1f}" for v in r))
    for name, counts in steps.items():
        print(f"  steps per task, {name}: {counts}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", required=True, help="a finished `vilbert demo` folder (read only)")
    p.add_argument("--out", required=True, help="where the runs go (reused when rerun)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=["shares", "round_robin"], choices=VARIANTS)
    p.add_argument("--val-every", type=int, default=0, help="multi-task runs: score val every N steps (0: never)")
    p.add_argument("--report-only", action="store_true", help="train nothing: print the finished runs among these")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    link_demo(Path(args.demo), out)
    steps = Steps(out, default_sizes())
    rows: Rows = {SINGLE: {}}
    counts: dict[str, dict[str, int]] = {"single-task": {t: steps.sizes.finetune[t].steps for t in TASKS}}
    start = time.time()
    for seed in args.seeds:  # interleaved: every variant of a seed before the next seed
        if not args.report_only or all(finished(steps.run_dir(VILBERT_ROW, t, seed)) for t in TASKS):
            rows[SINGLE][seed] = cells({t: single(steps, t, seed) for t in TASKS})
        for variant in args.variants:
            if args.report_only and not finished(multi_dir(steps, variant, seed)):
                continue
            per_task, counts[f"multi-task {variant}"] = multi(steps, variant, seed, args.val_every)
            rows.setdefault(f"multi-task {variant}", {})[seed] = cells(per_task)
        if not args.report_only:
            print(f"seed {seed} done at {time.time() - start:.0f} s (load average {os.getloadavg()[0]:.1f})", flush=True)
    print_table(rows, counts)
    print_stop_and_go(steps, args.variants, args.seeds)
    (out / "bench_multitask.json").write_text(json.dumps({"columns": [c[0] for c in TABLE], "rows": rows,
                                                          "steps_per_task": counts}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
