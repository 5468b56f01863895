"""Evaluation as one function: `evaluate(EvaluateRun(...))`, which `vilbert evaluate` and the demo call.

A model (saved, or built from a template) scored on one split of one task with the task's real
metric; a saved model directory alone describes the model and its heads (VQA's answers included).
Retrieval can rank in two stages (`rerank_top`: the first stage's embeddings, then ViLBERT on each
query's top K), against scoring every pair when `exhaustive` is set; see `vilbert.tasks.retrieval`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vilbert.core.runtime import resolve_device
from vilbert.io.atomic import write_json
from vilbert.pipelines.logs import Log, stderr_log
from vilbert.pipelines.models import ModelSource
from vilbert.tasks import build_task


@dataclass
class EvaluateRun:
    task: str
    data: str | Path  # a data root holding the task's folder
    model: ModelSource
    split: str = "val"
    features: str | Path | None = None  # default DATA/features.lmdb
    options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64  # rows per forward
    device: str = "auto"
    seed: int = 0  # the initial weights of a template
    predictions: str | Path | None = None  # also write the task's predictions (VQA: the official results format)
    rerank_top: int | None = None  # retrieval: re-rank each query's first-stage top K (None: every pair)
    exhaustive: bool = False  # with rerank_top: score every pair too, and report both


RERANK_TASKS = ("retrieval", "zero_shot_retrieval")


def evaluate(run: EvaluateRun, log: Log = stderr_log("vilbert evaluate")) -> dict[str, Any]:
    """{"task", "split", "checkpoint", "metrics"}; a model lacking the task's heads is an error."""
    options = dict(run.options)
    if run.rerank_top is not None or run.exhaustive:
        if run.task not in RERANK_TASKS:
            raise ValueError(f"--rerank-top and --exhaustive apply to {' and '.join(RERANK_TASKS)}, not {run.task!r}")
        options.update(rerank_top=run.rerank_top, exhaustive=run.exhaustive)
    task = build_task(run.task, run.data, run.features, **options)
    model = run.model.build(task.store.meta, task.store.path, run.seed, log).to(resolve_device(run.device))
    missing = [h for h in task.required_heads() if h not in model.heads]
    if missing:
        raise ValueError(f"{run.model.describe()} has no {missing} head(s) for task {run.task!r} "
                         f"(its heads: {', '.join(model.heads) or 'none'}); fine-tune it on the task first")
    with torch.no_grad(), model.task_scope(run.task):  # a multi-task model's token for the task, if it has them
        metrics = {k: float(v) for k, v in task.evaluate(model, run.split, batch_size=run.batch_size).items()}
        if run.predictions is not None:
            if not hasattr(task, "predictions"):
                raise ValueError(f"task {run.task!r} does not write predictions (vqa, refer and retrieval do)")
            write_json(run.predictions, task.predictions(model, run.split, batch_size=run.batch_size))
    checkpoint = str(run.model.directory) if run.model.saved else run.model.describe()
    return {"task": run.task, "split": run.split, "checkpoint": checkpoint, "metrics": metrics}
