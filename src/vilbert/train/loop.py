"""The one training loop every task uses: it knows only the `Task` interface.

Determinism (what exact resume and the 1-vs-N-process equivalence rest on):
- step k's global batch is fixed by (seed, epoch) (see `distributed.StepBatchSampler`, or the
  task's own `batch_plan`, e.g. multi-task: `planned.PlannedStepSampler`);
- before each micro-step the python/numpy/torch RNGs are seeded from (seed, step, micro-step, rank),
  so masking in `collate` and dropout in the model do not depend on what ran before;
- each micro-batch's mean loss is weighted by its share of the global batch (times the world
  size, which DDP's gradient averaging divides out), so the gradient is that of the global
  batch's mean loss however it is split across processes and accumulation steps.
Dataset items must be deterministic; randomness belongs in `collate` (run in the main process).
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from vilbert.core.runtime import resolve_device
from vilbert.core.subsets import data_subset
from vilbert.core.task import Task
from vilbert.io.atomic import remove_stale_temps
from vilbert.train import distributed as D
from vilbert.train.buckets import LengthBuckets
from vilbert.train.checkpoint import (
    DamagedCheckpointError,
    TrainerState,
    checkpoints_newest_first,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from vilbert.train.config import TRAJECTORY_FIELDS, TrainConfig
from vilbert.train.logging import RunLogger
from vilbert.train.optim import build_optimizer, build_scheduler
from vilbert.train.planned import PlannedStepSampler


@dataclass
class TrainResult:
    out_dir: Path
    step: int  # optimizer steps done
    total_steps: int
    epoch: int
    loss: float  # mean loss of the global batch of the last step (nan if no step ran)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> last evaluation
    checkpoint: Path | None = None
    finished: bool = False  # False when stopped early by `stop_after`


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. 'auto' uses autocast only on CUDA: bf16
    autocast is emulated, and several times slower, on CPUs."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def _collect(items: list[Any]) -> list[Any]:
    return items  # workers fetch items; the task's collate runs in the main process, seeded


def _seed_micro_step(seed: int, step: int, micro: int, rank: int) -> None:
    value = (seed * 1_000_003 + step * 10_007 + micro * 101 + rank) % (2**31 - 1)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def _ensure_heads(model: nn.Module, task: Task) -> None:
    """Add the heads the task needs that the model lacks (fine-tuning a pretrained encoder)."""
    heads = getattr(model, "heads", None)
    if not hasattr(model, "add_head") or heads is None:
        return
    for name, kwargs in task.required_heads().items():
        if name not in heads:
            model.add_head(name, **kwargs)


class _TaskLoss(nn.Module):
    """The model and the task's loss as one module, so that under DDP the forward's output is the
    loss: DDP looks for the parameters a step used from the output, and a model output the loss
    ignores (the poolers under RefCOCO+'s region scores) would be waited for and never arrive."""

    def __init__(self, model: nn.Module, task: Task) -> None:
        super().__init__()
        self.model, self.task = model, task

    def forward(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return self.task.loss(self.model, batch)


class _Run:
    def __init__(self, model: nn.Module, task: Task, config: TrainConfig, out_dir: Path, device: torch.device):
        self.model, self.task, self.config, self.out_dir, self.device = model, task, config, out_dir, device
        self.rank, self.world = D.rank(), D.world_size()
        dataset = task.dataset("train")
        if config.data_fraction < 1.0:
            dataset = Subset(dataset, data_subset(len(dataset), config.data_fraction))
        if len(dataset) == 0:
            raise ValueError(f"task {task.name!r} has no training examples")
        self.dataset = dataset
        self.plan = task.batch_plan()  # None: the trainer's own (seed, epoch) shuffle
        if self.plan is not None and config.data_fraction < 1.0:
            raise ValueError(f"task {task.name!r} plans its own batches: data_fraction < 1 does not apply")
        if config.bucket_by_length:
            self.plan = self._buckets(task, config, dataset)
        self.steps_per_epoch = self.plan.steps_per_epoch if self.plan else config.steps_per_epoch(len(dataset))
        self.total = config.max_steps or config.epochs * self.steps_per_epoch
        self.optimizer = build_optimizer(model, config.lr, config.weight_decay, config.betas, config.eps, config.lr_scales)
        self.scheduler = build_scheduler(self.optimizer, self.total, config.warmup_fraction)
        self.dtype = resolve_precision(config.precision, device)
        self.scaler = torch.amp.GradScaler(device.type) if self.dtype == torch.float16 else None
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.step = 0

    def _buckets(self, task: Task, config: TrainConfig, dataset) -> LengthBuckets:
        if self.plan is not None:
            raise ValueError(f"task {task.name!r} plans its own batches: bucket_by_length does not apply")
        lengths = task.lengths("train")
        if lengths is None:
            raise ValueError(f"task {task.name!r} gives no text lengths to bucket its batches by")
        if isinstance(dataset, Subset):
            lengths = [lengths[i] for i in dataset.indices]
        return LengthBuckets(lengths, config.batch_size)

    # -- state -----------------------------------------------------------------------------------

    def restore(self) -> bool:
        """Load the newest complete checkpoint; a damaged one is skipped (and said so) for the one before."""
        candidates = checkpoints_newest_first(self.out_dir)
        if not candidates:
            if D.is_main():
                print(f"no checkpoint under {self.out_dir}/checkpoints: starting from step 0", file=sys.stderr)
            return False
        for found in candidates:
            try:
                state, rng = load_checkpoint(found, self.model, self.rank)
                break
            except DamagedCheckpointError as err:
                if D.is_main():
                    print(f"skipping a damaged checkpoint: {err}", file=sys.stderr)
        else:
            raise DamagedCheckpointError(f"every checkpoint under {self.out_dir}/checkpoints is damaged "
                                         f"({', '.join(p.name for p in candidates)}); delete them to start again")
        # a field a checkpoint predates ran at its default
        saved = {**asdict(TrainConfig()), **state.config}
        changed = [
            f"{k}: {saved.get(k)!r} -> {getattr(self.config, k)!r}"
            for k in TRAJECTORY_FIELDS
            if _normalise(saved.get(k)) != _normalise(getattr(self.config, k))
        ]
        if changed:
            raise ValueError(f"cannot resume {found}: the run's config changed ({'; '.join(changed)})")
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        if self.scaler is not None and state.scaler:
            self.scaler.load_state_dict(state.scaler)
        if rng is not None:
            set_rng_state(rng)
        self.step = state.step
        return True

    def save(self) -> Path | None:
        rngs = [None] * self.world
        if D.is_distributed():
            torch.distributed.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        path = None
        if D.is_main():
            state = TrainerState(
                step=self.step, epoch=self.step // self.steps_per_epoch, position=self.step % self.steps_per_epoch,
                optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                scaler=self.scaler.state_dict() if self.scaler is not None else None, config=self.config.to_dict(),
            )
            path = save_checkpoint(self.out_dir, self.model, state, rngs, self.config.keep_last)
        D.barrier()
        return path

    # -- steps -----------------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def epoch_batches(self, end: int) -> tuple[D.StepBatchSampler | PlannedStepSampler, Any]:
        epoch, position = divmod(self.step, self.steps_per_epoch)
        if self.plan is not None:
            sampler = PlannedStepSampler(
                self.plan.epoch_batches(self.config.seed, epoch), self.config.grad_accum,
                start_step=position, num_steps=end - self.step, rank=self.rank, world_size=self.world,
            )
        else:
            sampler = D.StepBatchSampler(
                len(self.dataset), self.config.batch_size, self.config.grad_accum, self.config.seed, epoch,
                start_step=position, num_steps=end - self.step, rank=self.rank, world_size=self.world,
            )
        loader = DataLoader(
            self.dataset, batch_sampler=sampler, collate_fn=_collect, num_workers=self.config.num_workers,
            generator=torch.Generator().manual_seed(self.config.seed + epoch),  # leaves the global RNG alone
        )
        return sampler, iter(loader)

    def train_step(self, ddp: nn.Module, items_per_micro: list[list[Any]], n_global: int,
                   filler: int = 0) -> tuple[torch.Tensor, dict]:
        """Forward/backward every micro-batch of one step, then clip and update. Returns the
        (unreduced) sum of loss x examples on this rank and the stats summed the same way.
        `filler`: an example of the step's global batch, for a rank with nothing to do at the last
        micro-step (of the step's own task, so every rank uses the heads one process would)."""
        loss_sum = torch.zeros((), device=self.device)
        stats_sum: dict[str, float] = {}
        last = len(items_per_micro) - 1
        for micro, items in enumerate(items_per_micro):
            weight = len(items) * self.world / n_global
            if not items:
                if micro != last or self.world == 1:
                    continue  # nothing to do, and no gradient synchronisation to take part in
                items, weight = [self.dataset[filler]], 0.0  # join DDP's all-reduce with a zero gradient
            _seed_micro_step(self.config.seed, self.step, micro, self.rank)
            batch = self.task.collate(items).to(self.device)
            sync = micro == last or not isinstance(ddp, nn.parallel.DistributedDataParallel)
            with contextlib.nullcontext() if sync else ddp.no_sync():
                with self.autocast():
                    loss, stats = ddp(batch)  # the task's loss (through DDP under torchrun)
                if not torch.isfinite(loss.detach()).all():
                    raise FloatingPointError(f"loss is {loss.item()} at step {self.step} (micro-step {micro}, rank {self.rank})")
                scaled = loss.float() * weight
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            if weight > 0:
                loss_sum += loss.detach().float() * len(items)
                for key, value in stats.items():
                    stats_sum[key] = stats_sum.get(key, 0.0) + float(value) * len(items)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.config.clip_norm is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.clip_norm)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        stats_sum["grad_norm"] = float(grad_norm) * 1.0  # same on every rank after DDP's all-reduce
        return loss_sum, stats_sum

    def evaluate(self, splits: Sequence[str], logger: RunLogger) -> dict[str, dict[str, float]]:
        """Rank 0 evaluates the plain model; the other ranks wait."""
        results: dict[str, dict[str, float]] = {}
        if D.is_main():
            self.model.eval()
            with torch.no_grad(), self.autocast():
                for split in splits:
                    metrics = {k: float(v) for k, v in self.task.evaluate(self.model, split).items()}
                    logger.log_eval(self.step, split, metrics)
                    results[split] = metrics
            self.model.train()
        D.barrier()
        return results


def _normalise(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def train(
    model: nn.Module,
    task: Task,
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    eval_splits: Sequence[str] = ("val",),
) -> TrainResult:
    """Train `model` on `task` into `out_dir` (checkpoints, logs, curves); see the module doc.

    Under torchrun each process calls this; the process group is created (gloo on CPU, nccl on
    CUDA) and destroyed here unless the caller set it up. `resume=True` continues from the newest
    checkpoint in `out_dir` (or starts fresh when there is none).
    """
    device = resolve_device(config.device)
    created = D.init_distributed(device)
    try:
        return _train(model, task, config, Path(out_dir), resume, tuple(eval_splits), device)
    finally:
        if created:
            D.cleanup_distributed()


def _train(model, task, config, out_dir, resume, eval_splits, device) -> TrainResult:
    if D.is_main():  # what a killed run of this directory left half-written
        remove_stale_temps(out_dir)
        remove_stale_temps(out_dir / "checkpoints")
    _ensure_heads(model, task)
    model.to(device)
    model.train()
    run = _Run(model, task, config, out_dir, device)
    resumed = run.restore() if resume else False
    logger = RunLogger(out_dir, enabled=D.is_main(), resume_step=run.step if resumed else None)
    ddp = D.wrap_ddp(_TaskLoss(model, task), device, config.find_unused_parameters)
    end = run.total if config.stop_after is None else min(run.total, config.stop_after)
    result = TrainResult(out_dir=out_dir, step=run.step, total_steps=run.total, epoch=0, loss=math.nan)
    bar = tqdm(total=run.total, initial=run.step, desc=f"train {task.name}", dynamic_ncols=True,
               disable=not (D.is_main() and config.progress))
    saved_at = run.step if resumed else None
    while run.step < end:
        sampler, batches = run.epoch_batches(end)
        for step_in_epoch in sampler.steps:
            n_global = len(sampler.global_batch(step_in_epoch))
            micro_items = [next(batches) for _ in range(config.grad_accum)]
            lr = run.scheduler.get_last_lr()[0]
            loss_sum, stats = run.train_step(ddp, micro_items, n_global, sampler.global_batch(step_in_epoch)[0])
            run.step += 1
            bar.update(1)
            if run.step % config.log_every == 0 or run.step == end:
                loss = float(D.all_reduce_sum(loss_sum)) / n_global
                local_n = sum(len(i) for i in micro_items) or 1
                values = {"loss": loss, "lr": lr, **{k: (v if k == "grad_norm" else v / local_n) for k, v in stats.items()}}
                logger.log_train(run.step, values)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                result.loss = loss
            if config.eval_every and run.step % config.eval_every == 0 and run.step < run.total:
                result.metrics = run.evaluate(eval_splits, logger)
            if config.save_every and run.step % config.save_every == 0 and run.step < end:
                run.save()
                saved_at = run.step
    bar.close()
    if run.step == run.total and eval_splits:
        result.metrics = run.evaluate(eval_splits, logger)
    result.checkpoint = run.save() if saved_at != run.step else latest_checkpoint(out_dir)
    logger.close()
    result.step, result.epoch, result.finished = run.step, run.step // run.steps_per_epoch, run.step == run.total
    return result
