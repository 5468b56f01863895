"""What every vision-and-language task shares: text + regions -> `Batch`, and evaluation batches.

A task reads its own annotation format, then calls `RegionTextTask.make_batch` with the texts
(or text pairs) and image ids of its rows; regions come from the feature store in one read
transaction, padded to the batch's largest region count, and text to the batch's longest text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from vilbert.core.batch import Batch
from vilbert.core.regions import RegionBatch
from vilbert.core.task import Task
from vilbert.data.inputs import encode_texts
from vilbert.data.tokenizer import Tokenizer, load_tokenizer
from vilbert.features.store import FeatureStore


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
        return encode_texts(self.tokenizer, texts, self.data.max_text_length)

    def text_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token counts of `texts` as `encode_texts` makes them ([CLS] and [SEP] included, truncated)."""
        return [len(ids) for ids in self.tokenizer.encode_batch(list(texts), self.data.max_text_length)]

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


def batches(task: Task, items: Sequence[Any], batch_size: int) -> Iterator[Batch]:
    """Collated batches of `items` in order (for evaluation: no shuffling, no dropping), with a
    progress bar (tqdm: on a terminal, and in a log file when one is redirected there)."""
    for start in tqdm(range(0, len(items), batch_size), desc=f"evaluate {task.name}", unit="batch", leave=False):
        yield task.collate(items[start : start + batch_size])

