"""Fixed shares of a dataset, the same in every process and every run."""

from __future__ import annotations

import torch


def data_subset(num_examples: int, fraction: float, seed: int = 0) -> list[int]:
    """A fixed share of the examples; smaller fractions are subsets of larger ones (same seed).

    The trainer trains on it and pretraining draws its negative captions from it, so a data
    ablation never sees an example outside its share."""
    if fraction >= 1.0:
        return list(range(num_examples))
    keep = max(1, int(round(fraction * num_examples)))
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed))
    return sorted(order[:keep].tolist())
