"""Which task each step of a multi-task run trains, and on which examples.

Every step is one task's batch, of that task's batch size, as 12-in-1 steps the optimizer once
per task's batch. An epoch is S = sum over tasks of ceil(n_t / B_t) steps (one pass over every
task's data, taken together); the sampler shares those S steps among the tasks by weight:

    round_robin    equal shares, in a fixed cycle (t0, t1, t2, t0, ...), as 12-in-1 visits its tasks
    proportional   shares proportional to each task's batches per epoch: every task one pass an epoch
    temperature    shares proportional to batches ** (1 / temperature): 1 is proportional, large
                   values approach equal shares (the mixing T5 and mT5 use for unequal datasets)
    shares         shares proportional to numbers given per task (e.g. a run's steps per task)

Shares become whole step counts per epoch by largest remainders, and the steps of an epoch are
interleaved by smooth weighted round-robin: after any k steps of an epoch each task has had its
share of k to within one step (equal shares give the plain cycle), so a run shorter than an epoch
still gives each task its share. A task's batches come from its own stream: pass p over its
examples is a permutation drawn from (seed, task, pass), cut into batches of B_t (the last one
short), and each step of a task takes the next batch of its stream. Everything is a function of
(seed, epoch): the trainer's exact resume and 1-vs-N-process equality hold as for one task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from vilbert.core.task import PlannedBatch

SAMPLERS = ("round_robin", "proportional", "temperature", "shares")


@dataclass(frozen=True)
class TaskMix:
    """How a multi-task run shares its steps among the tasks (see the module docstring)."""

    sampler: str = "round_robin"  # 12-in-1's
    temperature: float = 2.0  # for "temperature"
    shares: dict[str, float] = field(default_factory=dict)  # for "shares": task -> relative share

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler {self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if self.sampler == "shares" and not self.shares:
            raise ValueError("sampler 'shares' needs a share per task (e.g. vqa=80,vcr=50)")
        if self.shares and self.sampler != "shares":
            raise ValueError(f"shares are given but the sampler is {self.sampler!r}; use sampler 'shares'")
        bad = {k: v for k, v in self.shares.items() if not (isinstance(v, (int, float)) and v >= 0)}
        if bad:
            raise ValueError(f"task shares must be numbers >= 0, got {bad}")

    def weights(self, names: Sequence[str], batches: Sequence[int]) -> list[float]:
        """Each task's relative share of the steps."""
        if self.sampler == "round_robin":
            return [1.0] * len(names)
        if self.sampler == "proportional":
            return [float(b) for b in batches]
        if self.sampler == "temperature":
            return [float(b) ** (1.0 / self.temperature) for b in batches]
        unknown = sorted(set(self.shares) - set(names))
        missing = [n for n in names if n not in self.shares]
        if unknown or missing:
            raise ValueError(f"task shares name {sorted(self.shares)} but the tasks are {list(names)}")
        if not any(self.shares[n] > 0 for n in names):
            raise ValueError(f"task shares {self.shares} give no task a step")
        return [float(self.shares[n]) for n in names]


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Whole counts summing to `total`, proportional to `weights` (largest remainders, ties to
    the earlier task)."""
    norm = sum(weights)
    exact = [total * w / norm for w in weights]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _mix_seed(seed: int, *parts: int) -> int:
    value = seed
    for part in parts:
        value = (value * 1_000_003 + part) % (2**63 - 1)
    return value


class MultiTaskPlan:
    """The `BatchPlan` of a multi-task run over the union of the tasks' train examples (task t's
    examples at `offsets[t]` onward); see the module docstring."""

    def __init__(self, names: Sequence[str], sizes: Sequence[int], batch_sizes: Sequence[int], mix: TaskMix) -> None:
        if not (len(names) == len(sizes) == len(batch_sizes)) or not names:
            raise ValueError(f"one size and batch size per task: {list(names)}, {list(sizes)}, {list(batch_sizes)}")
        empty = [n for n, s in zip(names, sizes) if s < 1]
        if empty:
            raise ValueError(f"task(s) {empty} have no training examples")
        bad = {n: b for n, b in zip(names, batch_sizes) if isinstance(b, bool) or not isinstance(b, int) or b < 1}
        if bad:
            raise ValueError(f"batch sizes must be whole numbers >= 1, got {bad}")
        self.names, self.sizes, self.batch_sizes = list(names), list(sizes), list(batch_sizes)
        self.offsets = [sum(self.sizes[:t]) for t in range(len(self.sizes))]
        self.batches_per_pass = [math.ceil(n / b) for n, b in zip(self.sizes, self.batch_sizes)]
        self.steps_per_epoch = sum(self.batches_per_pass)
        self.mix = mix
        self.counts = apportion(self.steps_per_epoch, mix.weights(self.names, self.batches_per_pass))
        self.tasks_of_epoch = self.epoch_tasks()

    def epoch_tasks(self) -> list[int]:
        """The task index of each step of an epoch (the same every epoch): smooth weighted
        round-robin over the per-epoch counts (each step goes to the task furthest behind its share)."""
        credit, order = [0] * len(self.counts), []
        for _ in range(self.steps_per_epoch):
            credit = [c + n for c, n in zip(credit, self.counts)]
            t = max(range(len(credit)), key=lambda i: (credit[i], -i))
            credit[t] -= self.steps_per_epoch
            order.append(t)
        return order

    def _pass_order(self, seed: int, t: int, pass_: int) -> list[int]:
        """Task t's examples in the order of its pass `pass_` (indices into the union)."""
        generator = torch.Generator().manual_seed(_mix_seed(seed, 1 + t, pass_))
        return [self.offsets[t] + i for i in torch.randperm(self.sizes[t], generator=generator).tolist()]

    def epoch_batches(self, seed: int, epoch: int) -> list[PlannedBatch]:
        used = [epoch * c for c in self.counts]  # batches of each task's stream before this epoch
        orders: dict[tuple[int, int], list[int]] = {}
        out = []
        for t in self.tasks_of_epoch:
            pass_, q = divmod(used[t], self.batches_per_pass[t])
            if (t, pass_) not in orders:
                orders[t, pass_] = self._pass_order(seed, t, pass_)
            b = self.batch_sizes[t]
            out.append(PlannedBatch(orders[t, pass_][q * b : (q + 1) * b], b))
            used[t] += 1
        return out

    def steps_per_task(self, steps: int) -> dict[str, int]:
        """How many of a run's first `steps` steps each task gets."""
        full, rest = divmod(steps, self.steps_per_epoch)
        counts = {n: c * full for n, c in zip(self.names, self.counts)}
        for t in self.tasks_of_epoch[:rest]:
            counts[self.names[t]] += 1
        return counts


def resolve_loss_weights(names: Sequence[str], weights: Mapping[str, float] | None) -> list[float]:
    """Each task's loss weight (1 where none is given); an unknown name is an error naming the tasks."""
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ValueError(f"loss weights for {unknown}, which are not among the tasks {list(names)}")
    bad = {k: v for k, v in weights.items() if not (isinstance(v, (int, float)) and v > 0)}
    if bad:
        raise ValueError(f"loss weights must be numbers > 0, got {bad}")
    return [float(weights.get(n, 1.0)) for n in names]
