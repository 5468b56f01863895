"""torchrun integration and the deterministic order of examples.

The global batch of optimizer step k is the same examples whatever the number of processes: the
epoch's order depends only on (seed, epoch), step k takes positions [k*B, (k+1)*B) of it, and each
accumulation micro-step and each rank takes a fixed contiguous share of that batch.
"""

from __future__ import annotations

import math
import os
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_distributed(device: torch.device) -> bool:
    """Join the torchrun process group (nccl on CUDA, gloo elsewhere) when launched by torchrun.

    Returns True when this call created the group (so the caller should destroy it).
    """
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method="env://")
    return True


def cleanup_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def wrap_ddp(model: nn.Module, device: torch.device, find_unused_parameters: bool = True) -> nn.Module:
    """DistributedDataParallel when a group is up, else the model itself."""
    if not is_distributed() or world_size() == 1:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def epoch_order(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's permutation of example indices: a function of (seed, epoch) only."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator)


def shard(indices: list[int], parts: int, part: int) -> list[int]:
    """Contiguous share `part` of `parts` (the first shares take the remainder; some may be empty)."""
    size = math.ceil(len(indices) / parts) if indices else 0
    return indices[part * size : (part + 1) * size]


class StepBatchSampler:
    """Yields, for each remaining optimizer step of an epoch and each accumulation micro-step, the
    list of dataset indices this rank processes (possibly empty), starting at `start_step`.

    The micro-step split is made on the nominal global batch size so it does not depend on how
    many examples the epoch's last batch happens to hold.
    """

    def __init__(
        self, num_examples: int, batch_size: int, grad_accum: int, seed: int, epoch: int,
        start_step: int = 0, num_steps: int | None = None, rank: int = 0, world_size: int = 1,
    ) -> None:
        self.order = epoch_order(num_examples, seed, epoch).tolist()
        self.batch_size, self.grad_accum = batch_size, grad_accum
        self.rank, self.world_size = rank, world_size
        steps_in_epoch = math.ceil(num_examples / batch_size)
        end = steps_in_epoch if num_steps is None else min(steps_in_epoch, start_step + num_steps)
        self.steps = range(start_step, end)

    def global_batch(self, step: int) -> list[int]:
        return self.order[step * self.batch_size : (step + 1) * self.batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        micro = math.ceil(self.batch_size / self.grad_accum)
        for step in self.steps:
            batch = self.global_batch(step)
            for m in range(self.grad_accum):
                yield shard(batch[m * micro : (m + 1) * micro], self.world_size, self.rank)

    def __len__(self) -> int:
        return len(self.steps) * self.grad_accum
