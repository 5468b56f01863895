"""What every vision-and-language task shares: text + regions -> `Batch`, and evaluation loops.

A task reads its own annotation format, then calls `RegionTextTask.make_batch` with the texts
(or text pairs) and image ids of its rows; regions come from the feature store in one read
transaction, padded to the batch's largest region count, and text to the batch's longest text.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from vilbert.data.batch import Batch
from vilbert.data.regions import RegionBatch
from vilbert.data.tokenizer import Tokenizer, load_tokenizer
from vilbert.features.store import FeatureStore
from vilbert.tasks.base import Task


@dataclass
class TaskData:
    """Where a task's data lives and how it is cut."""

    data_dir: str  # the dataset's own folder in its real layout (e.g. WORLD/vqa)
    features: str  # feature store (LMDB) path
    max_text_length: int = 36
    max_regions: int = 36  # real regions per image; the [IMG] row comes on top
    vocab: str | None = None  # WordPiece vocab.txt; None = bundled bert-base-uncased


class RegionTextTask(Task):
    """A task whose rows are (text or text pair, image id)."""

    def __init__(self, data: TaskData) -> None:
        if not os.path.exists(data.data_dir):
            raise FileNotFoundError(f"{type(self).__name__}: data directory {data.data_dir} does not exist")
        self.data = data
        self.tokenizer: Tokenizer = load_tokenizer(data.vocab)
        self._store: FeatureStore | None = None

    @property
    def store(self) -> FeatureStore:
        # Opened lazily so a task can be built (and pickled to workers) before the store is read.
        if self._store is None:
            self._store = FeatureStore(self.data.features)
        return self._store

    def regions(self, image_ids: Sequence[str | int]) -> RegionBatch:
        return self.store.get_many([str(i) for i in image_ids], max_regions=self.data.max_regions)

    def encode_texts(self, texts: Sequence[str] | Sequence[tuple[str, str]]) -> tuple[torch.Tensor, ...]:
        """Texts (or (a, b) pairs) -> ids, token types and mask [B,T], padded to the longest."""
        limit = self.data.max_text_length
        ids, types = [], []
        for text in texts:
            if isinstance(text, tuple):
                i, t = self.tokenizer.encode_pair(text[0], text[1], limit)
            else:
                i = self.tokenizer.encode(text, limit)
                t = [0] * len(i)
            ids.append(i)
            types.append(t)
        padded, mask = self.tokenizer.pad(ids)
        padded_types, _ = self.tokenizer.pad(types, pad_value=0)
        return torch.tensor(padded), torch.tensor(padded_types), torch.tensor(mask)

    def make_batch(
        self,
        texts: Sequence[str] | Sequence[tuple[str, str]],
        image_ids: Sequence[str | int],
        targets: dict[str, torch.Tensor] | None = None,
        meta: dict[str, list] | None = None,
        regions: RegionBatch | None = None,
    ) -> Batch:
        """One row per (text, image id); pass `regions` to reuse regions already read."""
        if len(texts) != len(image_ids):
            raise ValueError(f"{len(texts)} texts but {len(image_ids)} image ids")
        input_ids, token_types, mask = self.encode_texts(texts)
        regions = regions if regions is not None else self.regions(image_ids)
        return Batch(
            input_ids=input_ids,
            token_type_ids=token_types,
            attention_mask=mask,
            image_features=regions.features,
            image_locations=regions.locations,
            image_mask=regions.mask,
            targets=targets or {},
            meta=meta or {},
        )


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the duration; the model's previous mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def batches(task: Task, items: Sequence[Any], batch_size: int) -> Iterator[Batch]:
    """Collated batches of `items` in order (for evaluation: no shuffling, no dropping)."""
    for start in range(0, len(items), batch_size):
        yield task.collate(items[start : start + batch_size])


def single_pair_inputs(text: str, regions, max_text_length: int, max_regions: int | None,
                       device: torch.device) -> dict[str, torch.Tensor]:
    """Model inputs for one sentence and one image's `ImageRegions` (predict, explain), on `device`."""
    from vilbert.data.regions import collate_regions

    ids = load_tokenizer().encode(text, max_text_length)
    features, locations, mask = collate_regions([regions], max_regions)  # [1,R,D], [1,R,5], [1,R]
    inputs = {
        "input_ids": torch.tensor([ids]), "token_type_ids": torch.zeros(1, len(ids), dtype=torch.long),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        "image_features": features, "image_locations": locations, "image_mask": mask,
    }
    return {k: v.to(device) for k, v in inputs.items()}
