"""`run_demo`: build the plan, run its stages (skipping finished ones), write and print the tables."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, TextIO

import torch

from vilbert.data.readers.vqa import read_vqa, vqa_paths
from vilbert.demo.plan import MULTITASK, PRETRAIN, WORLD, DemoPlan, StageKey, build_plan
from vilbert.demo.results import ResultsTable, check_claims, make_table, multitask_claims, write_results
from vilbert.demo.sizes import BEFORE_THE_FIELD, TASKS, DemoSizes
from vilbert.demo.stages import StageRunner
from vilbert.demo.steps import ZERO_SHOT, Steps
from vilbert.demo.worker import command as worker_command
from vilbert.io.atomic import read_json, remove_stale_temps, write_json
from vilbert.tasks.vqa import answer_prior_accuracy

SETTINGS_FILE = "demo.json"


def check_settings(out: Path, sizes: DemoSizes) -> None:
    """Refuse to mix runs: OUT must hold a demo with the same sizes (or nothing). The time
    estimates (`seconds_per_*`) only drive the progress display, so they may differ."""
    path = out / SETTINGS_FILE
    wanted = json.loads(json.dumps(sizes.to_dict()))
    if path.is_file():
        before, now = _results_settings(read_json(path, "the demo's settings")), _results_settings(wanted)
        # A setting added since that folder was made is at its default there, or at what the demo
        # ran with before the setting existed where the default has changed since.
        missing = {**_field_defaults(), **BEFORE_THE_FIELD}
        before = {**{k: v for k, v in missing.items() if k in now and k not in before}, **before}
        if before != now:
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise FileExistsError(f"{out} holds a demo run with other settings (differs in: {', '.join(changed)}); "
                                  "choose another --out or delete it")
    else:
        write_json(path, wanted)


ESTIMATES = "seconds_per_"


def _field_defaults() -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(DemoSizes) if f.default is not dataclasses.MISSING}


def _results_settings(sizes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sizes.items() if not k.startswith(ESTIMATES)}


def run_demo(out: str | Path, sizes: DemoSizes, ablations: bool = False, stream: TextIO | None = None,
             heartbeat_s: float = 30.0, report_only: bool = False, jobs: int = 1) -> dict[str, Any]:
    """Run the demo into `out`; returns {table name: {"table": ..., "text": markdown}}.

    `report_only`: run nothing; write the tables from the stages finished so far (`-` elsewhere).
    `jobs` > 1: up to that many stages at once, each in its own process with as many torch threads
    as this process has (so the same results as one at a time: tested); give it jobs x threads <= cores.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be 1 or more, got {jobs}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, sizes)
    for folder in (out, out / "stages"):  # what a killed run left half-written (runs clean their own)
        remove_stale_temps(folder)
    plan = build_plan(out, sizes, ablations)
    stream = stream or sys.stdout
    runner = StageRunner(out, stream=stream, heartbeat_s=heartbeat_s)
    if report_only:
        done = [s for s in plan.stages if runner.is_done(s.name)]
        runner.run(done)  # all finished: only loads their stored results
        missing = [s.name for s in plan.stages if not runner.is_done(s.name)]
        if missing:
            print(f"vilbert demo: {len(missing)} stages not run yet: {', '.join(missing)}", file=stream)
    else:
        threads = torch.get_num_threads()  # every stage gets what it would get alone
        runner.run(plan.stages, jobs=jobs, launch=lambda name: worker_command(out, name, sizes, threads, ablations))
    write_json(out / "timings.json", {k: {"seconds": round(v, 1), "cpu_seconds": round(runner.cpu_timings.get(k, 0.0), 1)}
                                      for k, v in runner.timings.items()})
    return write_tables(plan, runner.results, stream, runner.threads)


def collect_metrics(plan: DemoPlan, results: dict[str, Any]) -> dict[str, dict[str, list[dict[str, float] | None]]]:
    """row key -> task -> the metrics of each seed in seed order (None: not run yet), from the stage
    results; seed k of two rows is compared with seed k."""
    metrics: dict[str, dict[str, list[dict[str, float] | None]]] = {}
    pretrain_seeds = Steps(plan.out, plan.sizes).pretrain_seeds  # zero-shot runs once per pretraining
    for table in plan.tables:
        for row in table.rows:
            if row.multitask:  # one stage per seed holds every task's metrics
                found = [results.get(StageKey(MULTITASK, row.key, seed).name) for seed in range(plan.sizes.seeds)]
                for task in TASKS:
                    if any(found):
                        metrics.setdefault(row.key, {})[task] = [r["metrics"][task] if r else None for r in found]
                continue
            zero_shot_seeds = pretrain_seeds if row.pretrained else 1
            for task in (*TASKS, ZERO_SHOT):
                # zero-shot fine-tunes nothing: one per pretrained model
                seeds = range(plan.sizes.seeds) if task in TASKS else range(zero_shot_seeds)
                found = [results.get(StageKey(task, row.key, seed).name) for seed in seeds]
                if any(found):
                    metrics.setdefault(row.key, {})[task] = [r["metrics"] if r else None for r in found]
    return metrics


def write_tables(plan: DemoPlan, results: dict[str, Any], stream: TextIO,
                 threads: dict[str, int] | None = None) -> dict[str, Any]:
    metrics = collect_metrics(plan, results)
    world = results.get(StageKey(WORLD).name) or {}
    test_images = (world.get("images") or {}).get(plan.sizes.eval_split)
    # Retrieval ranks the first `retrieval_eval_images` test images; chance follows that count.
    retrieval_images = test_images
    if test_images and plan.sizes.retrieval_eval_images:
        retrieval_images = min(test_images, plan.sizes.retrieval_eval_images)
    notes = []
    if retrieval_images != test_images:
        notes.append(f"retrieval ranks the first {retrieval_images} test images against their captions")
    notes.append(f"{plan.sizes.images + plan.sizes.extra_test_images} images ({test_images} test), preset {plan.sizes.preset!r}, "
                 f"pretraining {plan.sizes.pretrain_steps} steps of {plan.sizes.pretrain_batch}; "
                 "every row uses the same settings")
    if plan.sizes.seeds > 1:
        notes.append(f"every fine-tune ran at {plan.sizes.seeds} seeds ({plan.sizes.seed}..{plan.sizes.seed + plan.sizes.seeds - 1}): "
                     "mean ± sample standard deviation"
                     + ("; each pretrained row's seed k starts from its own pretraining at seed k, so the spread "
                        "covers how pretraining fell" if plan.sizes.vary_pretraining else ""))
    if threads:  # a stage's numbers depend on its thread count, as on another CPU
        counts = sorted(set(threads.values()))
        notes.append("stages ran with " + ", ".join(f"{n} torch thread{'s' if n > 1 else ''}"
                                                   + (f" ({sum(v == n for v in threads.values())} stages)" if len(counts) > 1 else "")
                                                   for n in counts))
    for task, ft in plan.sizes.finetune.items():
        if ft.reinit:
            notes.append(f"{task} fine-tunes start {' and '.join(ft.reinit)} afresh")
    # Pretraining's last validation numbers (alignment accuracy says whether zero-shot can work).
    pretraining = {key.subject + (f"-seed{key.seed}" if key.seed else ""): (results[key.name] or {}).get("val")
                   for key in plan.steps if key.step == PRETRAIN and key.name in results}
    prior = vqa_prior(plan)
    written: dict[str, Any] = {}
    for table_plan in plan.tables:
        rows = [(r.key, r.label) for r in table_plan.rows]
        table_notes = notes + (multitask_notes(plan.sizes) if table_plan.name == "ablation_multitask" else [])
        table = make_table(table_plan.title, rows, metrics, table_notes, retrieval_images, prior)
        claims = _claims(table, table_plan.name)
        text = write_results(table, plan.out, table_plan.name, claims,
                             {"sizes": plan.sizes.to_dict(), "pretraining_val": pretraining},
                             "12-in-1" if table_plan.name == "ablation_multitask" else "the paper")
        print("\n" + text, file=stream)
        print(f"wrote {plan.out / table_plan.name}.md, .json, .png", file=stream)
        written[table_plan.name] = {"table": table, "text": text}
    return written


def multitask_notes(sizes: DemoSizes) -> list[str]:
    steps = {t: sizes.finetune[t].steps for t in TASKS}
    shares = ", ".join(f"{t} {n}" for t, n in steps.items())
    return [(f"the multi-task row trains one model {sum(steps.values())} steps, each a batch of one task ({shares}, "
             "interleaved; each task's single-task batch size), its poolers as pretrained; it has no zero-shot "
             "row of its own (its pretrained model is the one above)")]


def vqa_prior(plan: DemoPlan) -> dict[str, float]:
    """{"VQA": accuracy of the best answer per question type} on the evaluation split, or {} when
    the world's VQA annotations are not there (the table then shows no VQA floor)."""
    folder = Steps(plan.out, plan.sizes).world / "vqa"
    paths = {split: vqa_paths(folder, split) for split in ("train", plan.sizes.eval_split)}
    if not all(p.is_file() for pair in paths.values() for p in pair):
        return {}
    train, test = (read_vqa(*paths[split]) for split in ("train", plan.sizes.eval_split))
    return {"VQA": answer_prior_accuracy(train, test)}


def _claims(table: ResultsTable, name: str):
    labels = dict(zip(table.keys, table.rows))
    if name == "results":
        return check_claims(table, labels["vilbert"], labels["vilbert_scratch"], labels["single_stream"])
    if name == "ablation_multitask":
        return multitask_claims(table, labels["vilbert_multitask"], labels["vilbert"])
    return None
