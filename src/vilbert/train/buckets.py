"""Batches of similar text length, so that padding to each batch's longest text costs little.

Each epoch's examples are shuffled by (seed, epoch) as the trainer's own order is, cut into chunks
of `chunk_batches` batches, each chunk sorted by length and cut into batches, and the full batches
shuffled again (the epoch's one short batch stays last, as in the plain order). Every example comes
once an epoch, and each step's batch is a function of (seed, epoch) alone: exact resume and the
1-vs-N-process equality hold as with the plain order (`vilbert.core.task.BatchPlan`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from vilbert.core.task import PlannedBatch
from vilbert.train.distributed import epoch_order

CHUNK_BATCHES = 50  # batches sorted together: enough to pair like lengths, few enough to mix


class LengthBuckets:
    """A `BatchPlan` over `lengths` (one per train example) at `batch_size`."""

    def __init__(self, lengths: Sequence[int], batch_size: int, chunk_batches: int = CHUNK_BATCHES) -> None:
        if not lengths:
            raise ValueError("length bucketing needs at least one example")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.chunk = batch_size * chunk_batches
        self.steps_per_epoch = math.ceil(len(self.lengths) / batch_size)

    def epoch_batches(self, seed: int, epoch: int) -> list[PlannedBatch]:
        order = epoch_order(len(self.lengths), seed, epoch).tolist()
        full, short = [], []
        for start in range(0, len(order), self.chunk):
            part = sorted(order[start : start + self.chunk], key=lambda i: (self.lengths[i], i))
            for b in range(0, len(part), self.batch_size):
                batch = part[b : b + self.batch_size]
                (full if len(batch) == self.batch_size else short).append(batch)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7_919 + 1)
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        return [PlannedBatch(batch, self.batch_size) for batch in shuffled + short]
