"""The trainer's typed configuration."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# Fields that decide which examples and updates make up step k: a resumed run must keep them.
TRAJECTORY_FIELDS = (
    "lr", "weight_decay", "warmup_fraction", "epochs", "max_steps", "batch_size", "grad_accum",
    "clip_norm", "seed", "data_fraction", "betas", "eps", "lr_scales", "bucket_by_length",
)


@dataclass
class TrainConfig:
    """How to train; the defaults are the paper's pretraining recipe (AdamW 1e-4, 10% warm-up, weight
    decay 0.01, 10 epochs) at batch 32."""

    lr: float = 1e-4
    weight_decay: float = 0.01  # never on biases or norm weights
    warmup_fraction: float = 0.1  # linear warm-up over this share of all steps, then linear decay
    epochs: int = 10
    max_steps: int | None = None  # when set, the run (and its schedule) is this many steps
    batch_size: int = 32  # global: summed over processes and accumulation micro-steps
    grad_accum: int = 1
    clip_norm: float | None = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    # Learning-rate multipliers by parameter name or module prefix ("encoder.text_layers.0."):
    # the original's pretraining gives the weights it loads from BERT a tenth of the rate.
    lr_scales: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    data_fraction: float = 1.0  # train on a fixed, nested share of the examples (data ablation)
    # Batches of like text lengths (train/buckets.py): far less padding at real caption lengths. A
    # different order of examples than the plain shuffle, so not the default (runs would change).
    bucket_by_length: bool = False
    num_workers: int = 0
    log_every: int = 1
    save_every: int = 0  # 0: a checkpoint only at the end
    eval_every: int = 0  # 0: evaluate only at the end
    keep_last: int = 2  # checkpoints kept on disk
    precision: str = "auto"  # auto: bf16 (or fp16) autocast on CUDA, fp32 elsewhere
    device: str = "auto"
    stop_after: int | None = None  # stop (saving) after this many steps; the schedule still spans the run
    find_unused_parameters: bool = True  # DDP: heads a task does not use get no gradient
    progress: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # JSON round trips give lists
        checks = [
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.warmup_fraction < 1, f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (1 <= self.grad_accum <= self.batch_size,
             f"grad_accum must be in [1, batch_size={self.batch_size}], got {self.grad_accum}"),
            (self.clip_norm is None or self.clip_norm > 0, f"clip_norm must be > 0 or None, got {self.clip_norm}"),
            (0 < self.data_fraction <= 1, f"data_fraction must be in (0, 1], got {self.data_fraction}"),
            (self.precision in PRECISIONS, f"precision {self.precision!r} is not one of {PRECISIONS}"),
            (self.keep_last >= 1, f"keep_last must be >= 1, got {self.keep_last}"),
            (self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def steps_per_epoch(self, num_examples: int) -> int:
        return max(1, math.ceil(num_examples / self.batch_size))

    def total_steps(self, num_examples: int) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return self.epochs * self.steps_per_epoch(num_examples)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; valid: {sorted(known)}")
        return cls(**data)
