"""A tiny synthetic task and model that exercise the trainer end to end in seconds.

Used by the trainer's tests (including the 2-process torchrun test, which runs this module's
`main`) and handy for checking a machine's distributed setup:
    torchrun --nproc_per_node 2 -m vilbert.train.toy --out /tmp/toy --steps 8
It is not registered as a task.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from vilbert.core.batch import Batch
from vilbert.core.task import Task
from vilbert.train.config import TrainConfig
from vilbert.train.loop import train

FEATURE_DIM = 6
VOCAB = 50


class ToyDataset(Dataset):
    """Deterministic examples: a few word ids, a few regions, and a regression target."""

    def __init__(self, size: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.lengths = torch.randint(2, 7, (size,), generator=g)
        self.regions = torch.randint(2, 5, (size,), generator=g)
        self.ids = torch.randint(1, VOCAB, (size, 6), generator=g)
        self.features = torch.randn(size, 4, FEATURE_DIM, generator=g)
        self.targets = torch.randn(size, generator=g)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict[str, Any]:
        n, r = int(self.lengths[i]), int(self.regions[i])
        return {"index": i, "ids": self.ids[i, :n], "features": self.features[i, :r], "target": self.targets[i]}


class ToyModel(nn.Module):
    """Embedding + linear text side, linear region side, LayerNorm, a scalar output per row."""

    def __init__(self, hidden: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, hidden)
        self.region = nn.Linear(FEATURE_DIM, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, 1)

    def forward(self, input_ids, attention_mask, image_features, image_mask, **_: Any) -> torch.Tensor:
        text = (self.embed(input_ids) * attention_mask[..., None]).sum(1) / attention_mask.sum(1, keepdim=True)
        image = (self.region(image_features) * image_mask[..., None]).sum(1) / image_mask.sum(1, keepdim=True)
        return self.out(self.dropout(self.norm(torch.tanh(text * image + text)))).squeeze(-1)  # [B]


class ToyTask(Task):
    """Mean squared error of the toy model's output; evaluation reports the MSE of a split."""

    name = "toy"

    def __init__(self, size: int = 48, seed: int = 0, loss_hook=None) -> None:
        self.data = {"train": ToyDataset(size, seed), "val": ToyDataset(16, seed + 1)}
        self.loss_hook = loss_hook  # tests use it to kill a run at a chosen moment
        self.seen: list[int] = []  # dataset indices in the order the loss saw them

    def dataset(self, split: str) -> Dataset:
        if split not in self.data:
            raise KeyError(f"toy task has no split {split!r}; splits: {sorted(self.data)}")
        return self.data[split]

    def lengths(self, split: str) -> list[int]:
        return self.dataset(split).lengths.tolist()

    def collate(self, examples: Sequence[dict[str, Any]]) -> Batch:
        T = max(len(e["ids"]) for e in examples)
        R = max(len(e["features"]) for e in examples)
        B = len(examples)
        ids = torch.zeros(B, T, dtype=torch.long)
        feats = torch.zeros(B, R, FEATURE_DIM)
        for row, e in enumerate(examples):
            ids[row, : len(e["ids"])] = e["ids"]
            feats[row, : len(e["features"])] = e["features"]
        text_mask = (ids != 0).long()
        image_mask = (feats.abs().sum(-1) > 0).long()
        return Batch(
            input_ids=ids, token_type_ids=torch.zeros_like(ids), attention_mask=text_mask,
            image_features=feats, image_locations=torch.zeros(B, R, 5), image_mask=image_mask,
            targets={"y": torch.stack([e["target"] for e in examples])},
            meta={"index": [e["index"] for e in examples]},
        )

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        if self.loss_hook is not None:
            self.loss_hook(len(self.seen))
        self.seen.extend(batch.meta["index"])
        pred = model(**batch.model_inputs())
        loss = ((pred.float() - batch.targets["y"]) ** 2).mean()
        return loss, {"abs_error": float((pred.detach() - batch.targets["y"]).abs().mean())}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, batch_size: int = 64) -> dict[str, float]:
        data = self.dataset(split)
        batch = self.collate([data[i] for i in range(len(data))])
        device = next(model.parameters()).device
        batch = batch.to(device)
        pred = model(**batch.model_inputs())
        return {"mse": float(((pred.float() - batch.targets["y"]) ** 2).mean())}


def main(argv: list[str] | None = None) -> int:
    """Train the toy task (one process or under torchrun) and write the final weights' summary."""
    parser = argparse.ArgumentParser(prog="python -m vilbert.train.toy")
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default="{}", help="TrainConfig fields as JSON")
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    config = TrainConfig.from_dict({"progress": False, **json.loads(args.config)})
    torch.manual_seed(1234)  # the same initial weights in every process
    model = ToyModel()
    result = train(model, ToyTask(size=args.size), config, args.out, resume=args.resume, eval_splits=())
    print(json.dumps({"step": result.step, "loss": result.loss}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
