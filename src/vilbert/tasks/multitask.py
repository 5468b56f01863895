"""Several tasks trained as one (12-in-1: Lu et al., CVPR 2020): a `Task` the trainer runs like any other.

- Data: the union of the tasks' train examples, each tagged with its task; the batch plan
  (`vilbert.tasks.mixing`) makes every step one task's batch, of that task's batch size.
- collate / loss: the step's task's own, its loss times the task's weight (12-in-1 weights each
  task's loss by its learning rate over the smallest); the logged numbers are prefixed by the
  task's name ("vqa/loss", "vcr/accuracy").
- evaluate: every task's own metrics on the split, prefixed by its name ("vqa/accuracy",
  "refer/accuracy"), so each task's curve is logged separately.
- Heads: the union of the tasks' heads; tasks that need the same head (VCR and retrieval both
  score pairs with "pair_score", as the original's `vil_logit`) share it.
- Task tokens: when the model has them (`ViLBertConfig.task_tokens`), each task's loss and
  evaluation run under `model.task_scope(name)`, so the task's token follows [CLS].
"""

from __future__ import annotations

import bisect
import contextlib
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from vilbert.core.batch import Batch
from vilbert.core.runtime import unwrap_model
from vilbert.core.task import Task
from vilbert.tasks.mixing import MultiTaskPlan, TaskMix, resolve_loss_weights

TASK_KEY = "multitask_task"  # Batch.meta key: [index of the batch's task]


class TaggedUnion(torch.utils.data.Dataset):
    """Several datasets end to end; item i is (task index, that dataset's item)."""

    def __init__(self, datasets: Sequence[Any]) -> None:
        self.datasets = list(datasets)
        self.ends = []
        total = 0
        for data in self.datasets:
            total += len(data)
            self.ends.append(total)

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def __getitem__(self, index: int) -> tuple[int, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        t = bisect.bisect_right(self.ends, index)
        start = self.ends[t - 1] if t else 0
        return t, self.datasets[t][index - start]


def task_scope(model: nn.Module, name: str) -> contextlib.AbstractContextManager:
    """The model's task-token scope for `name` (a no-op for a model without task tokens)."""
    scope = getattr(unwrap_model(model), "task_scope", None)
    return scope(name) if scope is not None else contextlib.nullcontext()


class MultiTask(Task):
    """Tasks by name (in order), each with its batch size and loss weight, mixed by `mix`."""

    name = "multitask"

    def __init__(self, tasks: Mapping[str, Task], batch_sizes: Mapping[str, int],
                 loss_weights: Mapping[str, float] | None = None, mix: TaskMix = TaskMix()) -> None:
        if len(tasks) < 1:
            raise ValueError("a multi-task run needs at least one task")
        self.names = list(tasks)
        self.tasks = [tasks[n] for n in self.names]
        missing = [n for n in self.names if n not in batch_sizes]
        unknown = sorted(set(batch_sizes) - set(self.names))
        if missing or unknown:
            raise ValueError(f"batch sizes are given for {sorted(batch_sizes)}; the tasks are {self.names}")
        self.batch_sizes = [batch_sizes[n] for n in self.names]
        self.loss_weights = resolve_loss_weights(self.names, loss_weights)
        self.mix = mix
        self._datasets: dict[str, TaggedUnion] = {}
        self._plan: MultiTaskPlan | None = None
        self.required_heads()  # a head two tasks need with different arguments is an error now

    def required_heads(self) -> dict[str, dict[str, Any]]:
        heads: dict[str, dict[str, Any]] = {}
        owner: dict[str, str] = {}
        for name, task in zip(self.names, self.tasks):
            for head, kwargs in task.required_heads().items():
                if head in heads and heads[head] != kwargs:
                    raise ValueError(f"tasks {owner[head]!r} and {name!r} both need head {head!r} but with different "
                                     f"arguments ({heads[head]} vs {kwargs})")
                heads.setdefault(head, kwargs)
                owner.setdefault(head, name)
        return heads

    def dataset(self, split: str) -> TaggedUnion:
        if split not in self._datasets:
            self._datasets[split] = TaggedUnion([task.dataset(split) for task in self.tasks])
        return self._datasets[split]

    def batch_plan(self) -> MultiTaskPlan:
        if self._plan is None:
            sizes = [len(d) for d in self.dataset("train").datasets]
            self._plan = MultiTaskPlan(self.names, sizes, self.batch_sizes, self.mix)
        return self._plan

    def collate(self, examples: Sequence[tuple[int, Any]]) -> Batch:
        tasks = {t for t, _ in examples}
        if len(tasks) != 1:
            raise ValueError(f"a multi-task batch holds one task's examples; this one mixes "
                             f"{sorted(self.names[t] for t in tasks)}")
        t = tasks.pop()
        batch = self.tasks[t].collate([item for _, item in examples])
        batch.meta[TASK_KEY] = [t]
        return batch

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        t = batch.meta[TASK_KEY][0]
        name = self.names[t]
        with task_scope(model, name):
            loss, stats = self.tasks[t].loss(model, batch)
        logged = {f"{name}/{k}": float(v) for k, v in stats.items()} | {f"{name}/loss": float(loss.detach())}
        return loss * self.loss_weights[t], logged

    def evaluate(self, model: nn.Module, split: str, batch_size: int = 64) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for name, task in zip(self.names, self.tasks):
            with task_scope(model, name):
                metrics |= {f"{name}/{k}": float(v) for k, v in task.evaluate(model, split, batch_size).items()}
        return metrics


def metrics_by_task(metrics: Mapping[str, float], names: Sequence[str]) -> dict[str, dict[str, float]]:
    """{"vqa/accuracy": x, ...} -> {"vqa": {"accuracy": x}, ...} for the given task names."""
    out: dict[str, dict[str, float]] = {name: {} for name in names}
    for key, value in metrics.items():
        name, sep, metric = key.partition("/")
        if sep and name in out:
            out[name][metric] = value
    return out
