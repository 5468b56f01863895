"""Multi-task fine-tuning as one function: `multitask(MultitaskRun(...))`, which `vilbert finetune
--tasks` calls: one shared model with every task's head, trained on all the tasks at once
(12-in-1: Lu et al., CVPR 2020; `vilbert.tasks.multitask`, `vilbert.tasks.mixing`).

Each step is one task's batch of that task's size; the sampler (`TaskMix`) shares the steps. The
defaults follow 12-in-1: round-robin over the tasks, each task's recipe batch size, the base
learning rate the smallest of the tasks' recipe rates and each task's loss weighted by its
recipe rate over that one (the original's `loss_scale`). Task tokens (`task_tokens=True`) give
each task a learned token after [CLS]; a model that already has task tokens keeps using them.

Writes what `finetune` writes: the trainer's output under OUT, OUT/model (every task's head, and
the task tokens if any) and OUT/metrics.json with each split's metrics prefixed by the task
("vqa/accuracy", "vcr/q_ar"), plus OUT/multitask_run.json (the tasks, batch sizes, weights and
sampler: a resumed run must keep them). Under torchrun every process calls it; rank 0 writes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from vilbert.core.runtime import resolve_device
from vilbert.io.atomic import read_json, write_json
from vilbert.pipelines.finetune import FinetuneResult, train_and_save
from vilbert.pipelines.logs import Log, stderr_log
from vilbert.pipelines.models import ModelSource, check_fits_store
from vilbert.pipelines.settings import multitask_train_config
from vilbert.tasks import build_task, recipe
from vilbert.tasks.mixing import TaskMix
from vilbert.tasks.multitask import MultiTask
from vilbert.train import TrainConfig
from vilbert.train import distributed as D

RUN_FILE = "multitask_run.json"


@dataclass(frozen=True)
class TaskSpec:
    """One task of a multi-task run; None takes the default (module docstring)."""

    name: str
    batch_size: int | None = None  # None: the task's recipe batch size
    loss_weight: float | None = None  # None: the task's recipe lr over the smallest among the run's tasks
    options: dict[str, Any] = field(default_factory=dict)  # build_task options (TaskData fields, the task's own)


@dataclass
class MultitaskRun:
    """Everything a multi-task run is; `train` None means lr = the smallest recipe lr and epochs
    = the largest recipe's (TrainConfig.batch_size is set to the largest task batch: it bounds
    grad_accum; each step's batch is its task's size)."""

    tasks: tuple[TaskSpec, ...]
    data: str | Path  # a data root holding every task's folder
    out: str | Path
    model: ModelSource
    features: str | Path | None = None  # default DATA/features.lmdb (a task's options may name its own)
    mix: TaskMix = field(default_factory=TaskMix)
    task_tokens: bool = False  # a learned token per task after [CLS] (12-in-1's --task_specific_tokens)
    reinit: tuple[str, ...] = ()
    text_lr_scale: float = 1.0
    train: TrainConfig | None = None
    eval_splits: tuple[str, ...] = ("val", "test")
    keep_checkpoints: bool = True
    resume: bool = False

    def __post_init__(self) -> None:
        self.tasks = tuple(TaskSpec(t) if isinstance(t, str) else t for t in self.tasks)
        names = [t.name for t in self.tasks]
        if not names:
            raise ValueError("a multi-task run needs at least one task")
        if len(set(names)) != len(names):
            raise ValueError(f"a task is named twice in {names}")
        for name in names:
            recipe(name)  # an unknown name lists the valid ones

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def resolved(self) -> list[TaskSpec]:
        """The tasks with every default filled in."""
        base = min(recipe(n).lr for n in self.names)
        return [replace(t, batch_size=t.batch_size or recipe(t.name).batch_size,
                        loss_weight=t.loss_weight if t.loss_weight is not None else recipe(t.name).lr / base)
                for t in self.tasks]

    def record(self) -> dict[str, Any]:
        """What decides the run's trajectory besides TrainConfig and the model (multitask_run.json)."""
        return {"tasks": [asdict(t) for t in self.resolved()], "mix": asdict(self.mix),
                "task_tokens": self.task_tokens, "reinit": list(self.reinit), "text_lr_scale": self.text_lr_scale}


def multitask(run: MultitaskRun, log: Log = stderr_log("vilbert finetune")) -> FinetuneResult:
    """Run (or resume) the multi-task fine-tuning described by `run`; see the module docstring."""
    specs = run.resolved()
    config = run.train or multitask_train_config(run.names)
    config = replace(config, batch_size=max(s.batch_size for s in specs))
    created = D.init_distributed(resolve_device(config.device))  # ours: the group outlives train()
    try:
        result = _multitask(run, specs, config, log if D.is_main() else (lambda message: None))
        D.barrier()
        return result
    finally:
        if created:
            D.cleanup_distributed()


def _multitask(run: MultitaskRun, specs: list[TaskSpec], config: TrainConfig, log: Log) -> FinetuneResult:
    _check_run_file(Path(run.out), run.record(), run.resume)
    torch.manual_seed(config.seed)
    tasks = {s.name: build_task(s.name, run.data, run.features, **s.options) for s in specs}
    first = next(iter(tasks.values()))
    model = run.model.build(first.store.meta, first.store.path, config.seed, log)
    for name, task in tasks.items():
        check_fits_store(model.config, task.store.meta, task.store.path, f"the model for {name!r}")
    if run.task_tokens or model.config.task_tokens:
        torch.manual_seed(config.seed)
        added = model.add_task_tokens(run.names)
        if added:
            log(f"task tokens added for {', '.join(added)}")
    task = MultiTask(tasks, {s.name: s.batch_size for s in specs}, {s.name: s.loss_weight for s in specs}, run.mix)
    plan = task.batch_plan()
    steps = config.max_steps or config.epochs * plan.steps_per_epoch
    per_task = plan.steps_per_task(steps)
    log(f"{steps} steps ({plan.steps_per_epoch} an epoch), by task: "
        + ", ".join(f"{n} {per_task[n]} x {s.batch_size}" for n, s in zip(run.names, specs)))
    if D.is_main():
        Path(run.out).mkdir(parents=True, exist_ok=True)
        write_json(Path(run.out) / RUN_FILE, run.record())
    label = "+".join(run.names)
    return train_and_save(task, model, label, run, config, f"{', '.join(run.names)} together ({run.data})", log,
                          extra={"tasks": run.names, "steps_per_task": per_task})


def _check_run_file(out: Path, record: dict[str, Any], resume: bool) -> None:
    """A resumed run must keep its tasks, batch sizes, weights and sampler (they decide step k)."""
    path = out / RUN_FILE
    if not (resume and path.is_file()):
        return
    before = read_json(path, "the multi-task run's settings")
    record = json.loads(json.dumps(record))  # as the file holds it (lists, floats)
    if not isinstance(before, dict):
        before = {}
    changed = sorted(k for k in set(before) | set(record) if before.get(k) != record.get(k))
    if changed:
        raise ValueError(f"cannot resume {out}: the multi-task settings changed ({', '.join(changed)}); see {path}")
