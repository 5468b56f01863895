"""Fine-tuning as one function: `finetune(FinetuneRun(...))`, which `vilbert finetune` and the demo call.

One task (by name, over a data root in the real datasets' layout), from a saved model (a
pretraining run's OUT/model) or from a template built afresh. Writes the trainer's output under
OUT (checkpoints, logs, curves), the model at OUT/model (config.json names its heads, e.g. VQA's
answers) and OUT/metrics.json with the metrics of `eval_splits`. Under torchrun every process
calls it; rank 0 writes the model and the metrics.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from vilbert.core.runtime import resolve_device
from vilbert.core.task import Task
from vilbert.io.atomic import write_json
from vilbert.model import ViLBert, save_pretrained
from vilbert.model.hub import write_model_card
from vilbert.pipelines.logs import Log, stderr_log
from vilbert.pipelines.models import ModelSource, text_stream_lr_scales
from vilbert.pipelines.settings import train_config_for
from vilbert.tasks import build_task
from vilbert.train import TrainConfig, train
from vilbert.train import distributed as D
from vilbert.train.checkpoint import checkpoint_root

MODEL_DIR = "model"
METRICS_FILE = "metrics.json"


@dataclass
class FinetuneRun:
    """Everything a fine-tuning run is; `train` None means the task's recipe."""

    task: str
    data: str | Path  # a data root holding the task's folder (vqa/, vcr/, refcoco+/, flickr30k/)
    out: str | Path
    model: ModelSource
    features: str | Path | None = None  # default DATA/features.lmdb
    options: dict[str, Any] = field(default_factory=dict)  # TaskData fields or the task's own options
    reinit: tuple[str, ...] = ()  # modules started afresh before training, e.g. the poolers
    text_lr_scale: float = 1.0  # the text stream's share of the learning rate
    train: TrainConfig | None = None
    eval_splits: tuple[str, ...] = ("val", "test")  # scored at the end (a split without labels is skipped)
    keep_checkpoints: bool = True  # False: a finished run keeps only OUT/model (no optimizer state)
    resume: bool = False


@dataclass
class FinetuneResult:
    model: ViLBert
    steps: int
    finished: bool
    metrics: dict[str, Any]  # what OUT/metrics.json holds ({} on ranks other than 0)


def finetune(run: FinetuneRun, log: Log = stderr_log("vilbert finetune")) -> FinetuneResult:
    """Run (or resume) the fine-tuning described by `run`; see the module docstring."""
    config = run.train or train_config_for(run.task)
    created = D.init_distributed(resolve_device(config.device))  # ours: the group outlives train()
    try:
        result = _finetune(run, config, log)
        D.barrier()
        return result
    finally:
        if created:
            D.cleanup_distributed()


def _finetune(run: FinetuneRun, config: TrainConfig, log: Log) -> FinetuneResult:
    torch.manual_seed(config.seed)
    task = build_task(run.task, run.data, run.features, **run.options)
    model = run.model.build(task.store.meta, task.store.path, config.seed, log)
    if model.config.task_tokens:  # a multi-task model's: this task trains under its own token
        added = model.add_task_tokens([run.task])
        if added:
            log(f"added a task token for {run.task!r} (the model has {', '.join(model.config.task_tokens[:-1])})")
    with model.task_scope(run.task):
        return train_and_save(task, model, run.task, run, config, f"{run.task} ({run.data})", log)


def train_and_save(task: Task, model: ViLBert, label: str, run: Any, config: TrainConfig, trained_on: str,
                   log: Log, extra: dict[str, Any] | None = None) -> FinetuneResult:
    """Re-initialise `run.reinit`, train `task` into `run.out` (its text stream at
    `run.text_lr_scale` of the rate), then on rank 0 save OUT/model, score `run.eval_splits` and
    write OUT/metrics.json (`label` as its task, then `extra`) and the model card. `run`: a
    FinetuneRun or a MultitaskRun."""
    if run.reinit:
        torch.manual_seed(config.seed)
        model.reinitialize(run.reinit)
        log(f"re-initialised {', '.join(run.reinit)}")
    config = replace(config, lr_scales=text_stream_lr_scales(model, run.text_lr_scale))
    during = ("val",) if "val" in run.eval_splits else ()
    result = train(model, task, config, run.out, resume=run.resume, eval_splits=during)
    if not D.is_main():
        return FinetuneResult(model, result.step, result.finished, {})
    out = Path(run.out)
    save_pretrained(model, out / MODEL_DIR)
    metrics: dict[str, Any] = {"task": label, **(extra or {}), "steps": result.step, "finished": result.finished,
                               "model": str(out / MODEL_DIR)}
    if result.finished:
        metrics.update(evaluate_splits(task, model, run.eval_splits, result.metrics, log))
        write_model_card(out / MODEL_DIR, model.config, f"{trained_on}, {result.step} steps",
                         {k: v for k, v in metrics.items() if isinstance(v, dict)})
        if not run.keep_checkpoints:
            # The checkpoints hold the optimizer state (twice the model) to resume an unfinished
            # run; a finished one is its model.
            shutil.rmtree(checkpoint_root(out), ignore_errors=True)
    write_json(out / METRICS_FILE, metrics)
    return FinetuneResult(model, result.step, result.finished, metrics)


def evaluate_splits(task: Task, model: ViLBert, splits: tuple[str, ...], known: dict[str, dict[str, float]],
                    log: Log) -> dict[str, dict[str, float]]:
    """Metrics per split (reusing what the trainer already computed); a split without labels is
    skipped, and said so."""
    out: dict[str, dict[str, float]] = {}
    for split in splits:
        if split in known:
            out[split] = known[split]
            continue
        try:
            out[split] = {k: float(v) for k, v in task.evaluate(model, split).items()}
        except FileNotFoundError as err:
            log(f"no {split} metrics: {err}")
    return out
