"""The one batch type every task hands to the model.

A task's collate turns its examples into a `Batch`; the trainer moves it to the device and passes
it to the task's loss. Text is padded only to the batch's longest text and regions only to the
batch's largest region count (the original padded every caption to 36 tokens).

Dimension letters: B batch rows, T text tokens, R regions (the [IMG] row included), D region
feature width. Multiple-choice tasks flatten their choices into rows (B = questions x choices) and
keep the grouping in `targets`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] long, word-piece ids
    token_type_ids: torch.Tensor  # [B, T] long, 0/1 segment ids
    attention_mask: torch.Tensor  # [B, T] long/bool, 1 = real token
    image_features: torch.Tensor  # [B, R, D] float, row 0 = [IMG] (mean of the real regions)
    image_locations: torch.Tensor  # [B, R, 5] float, [x1/W, y1/H, x2/W, y2/H, area/(W*H)]
    image_mask: torch.Tensor  # [B, R] long/bool, 1 = real region
    targets: dict[str, torch.Tensor] = field(default_factory=dict)  # task-specific labels
    meta: dict[str, list] = field(default_factory=dict)  # ids etc.; never moved to a device

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        targets = {k: v.to(device, non_blocking=non_blocking) for k, v in self.targets.items()}
        return replace(self, **moved, targets=targets)

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The keyword arguments of the model's forward that come from the batch."""
        return {
            "input_ids": self.input_ids,
            "token_type_ids": self.token_type_ids,
            "attention_mask": self.attention_mask,
            "image_features": self.image_features,
            "image_locations": self.image_locations,
            "image_mask": self.image_mask,
        }
