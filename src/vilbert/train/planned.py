"""The step sampler for a task that plans its own batches (`Task.batch_plan`, e.g. multi-task).

The plan fixes each step's global batch from (seed, epoch), as the trainer's own shuffle does;
this sampler cuts it the same way `distributed.StepBatchSampler` does: accumulation micro-steps
on the batch's nominal size, then a contiguous share per rank. So a planned run keeps the
trainer's contract: the same examples at step k however many processes run it, and exact resume.
"""

from __future__ import annotations

import math
from typing import Iterator

from vilbert.core.task import PlannedBatch
from vilbert.train.distributed import shard


class PlannedStepSampler:
    """Yields, for each remaining step of an epoch's planned batches and each micro-step, this
    rank's list of dataset indices (possibly empty), starting at `start_step`."""

    def __init__(self, batches: list[PlannedBatch], grad_accum: int, start_step: int = 0,
                 num_steps: int | None = None, rank: int = 0, world_size: int = 1) -> None:
        self.batches, self.grad_accum = batches, grad_accum
        self.rank, self.world_size = rank, world_size
        end = len(batches) if num_steps is None else min(len(batches), start_step + num_steps)
        self.steps = range(start_step, end)

    def global_batch(self, step: int) -> list[int]:
        return self.batches[step].indices

    def __iter__(self) -> Iterator[list[int]]:
        for step in self.steps:
            batch = self.batches[step]
            micro = math.ceil(batch.nominal_size / self.grad_accum)
            for m in range(self.grad_accum):
                yield shard(batch.indices[m * micro : (m + 1) * micro], self.world_size, self.rank)

    def __len__(self) -> int:
        return len(self.steps) * self.grad_accum
