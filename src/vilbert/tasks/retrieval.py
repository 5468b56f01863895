"""Caption-based image retrieval (Flickr30k jsonlines), fine-tuned or zero-shot.

Training (as in the paper): each caption of a training image gives a 4-way choice, scored by the
"pair_score" head and trained with cross-entropy toward choice 0:
    0 the true pair, 1 a random caption of another image, 2 a random other image,
    3 a hard negative: a caption of one of the `hard_pool` (100) images nearest to the true image
      by mean region feature (L2), computed once per split.
Evaluation scores every caption with every image (`vilbert.model.pair_cache.score_matrix`, cached
per caption / per image by default) and reports recall@1/5/10 as fractions in [0, 1]:
    ir_rK  image retrieval: a caption's own image is among the K best-scoring images;
    tr_rK  text retrieval: one of an image's own captions is among the K best-scoring captions.
Ties count against the truth (a tie with a wrong candidate ranks it first), so a model that
scores everything alike gets no credit.

Zero-shot (`zero_shot=True`, or the task `zero_shot_retrieval`): the pretrained alignment head
scores the pairs, log P(aligned) (index 0; the original ranks by its softmax, same order); there
is no training.

Dimension letters: Q training captions in a batch, Nt captions, Ni images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vilbert.core.batch import Batch
from vilbert.core.regions import RegionBatch
from vilbert.core.runtime import unwrap_model
from vilbert.data.readers.flickr30k import RetrievalImage, read_flickr30k
from vilbert.model.pair_cache import ImageInputs, TextInputs, score_matrix
from vilbert.tasks.common import RegionTextTask, TaskData
from vilbert.tasks.registry import Recipe, register_task

CHOICES = 4  # true pair, random caption, random image, hard-negative caption
KS = (1, 5, 10)


@dataclass(frozen=True)
class CaptionRow:
    """One training caption: caption `caption` of image `image` (indices into the split)."""

    split: str
    image: int
    caption: int


@dataclass
class RetrievalSplit:
    images: list[RetrievalImage]
    captions: list[str]  # every caption of the split, image by image
    caption_image: torch.Tensor  # [Nt] long, the index of each caption's image
    first_caption: list[int]  # [Ni] index of each image's first caption


def image_retrieval_recall(scores: torch.Tensor, caption_image: torch.Tensor,
                           ks: Sequence[int] = KS) -> dict[str, float]:
    """scores [Nt,Ni], caption_image [Nt] -> ir_rK: share of captions whose image ranks < K."""
    true = scores.gather(1, caption_image[:, None])  # [Nt,1]
    others = torch.ones_like(scores, dtype=torch.bool).scatter_(1, caption_image[:, None], False)
    rank = ((scores >= true) & others).sum(1)  # [Nt], ties count against the truth
    return {f"ir_r{k}": float((rank < k).float().mean()) for k in ks}


def text_retrieval_recall(scores: torch.Tensor, caption_image: torch.Tensor,
                          ks: Sequence[int] = KS) -> dict[str, float]:
    """scores [Nt,Ni], caption_image [Nt] -> tr_rK: share of images with one of their captions ranked < K."""
    n_images = scores.shape[1]
    own = caption_image[:, None] == torch.arange(n_images, device=scores.device)[None]  # [Nt,Ni]
    best_own = scores.masked_fill(~own, float("-inf")).max(0).values  # [Ni]
    rank = ((scores >= best_own[None]) & ~own).sum(0)  # [Ni] wrong captions at or above the best own one
    return {f"tr_r{k}": float((rank < k).float().mean()) for k in ks}


def recalls(scores: torch.Tensor, caption_image: torch.Tensor, ks: Sequence[int] = KS) -> dict[str, float]:
    """Both directions' recall@K from one caption x image score matrix."""
    scores, caption_image = scores.float().cpu(), caption_image.cpu()
    return {**image_retrieval_recall(scores, caption_image, ks), **text_retrieval_recall(scores, caption_image, ks)}


def nearest_images(means: torch.Tensor, k: int) -> torch.Tensor:
    """means [Ni,D] -> [Ni,k] indices of each image's k nearest other images (L2), nearest first."""
    distances = torch.cdist(means.double(), means.double())  # [Ni,Ni]
    distances.fill_diagonal_(float("inf"))
    return distances.topk(k, dim=1, largest=False).indices


RECIPE = Recipe("flickr30k", max_text_length=30, batch_size=64, lr=2e-5, epochs=20)


@register_task("retrieval", RECIPE)
class RetrievalTask(RegionTextTask):
    """Flickr30k-style retrieval. `data.data_dir` holds {split}.jsonl.

    Options: `zero_shot` (score with the alignment head, no training), `hard_pool` (nearest images
    to draw hard negatives from; clamped to the split's size), `cached` (evaluation reuses
    per-caption and per-image work; False = the plain forward), `pair_batch_size` (pairs per
    forward in evaluation; default the evaluate call's batch_size), `progress` (tqdm bar),
    `eval_images` (evaluation splits keep only their first N images and those images' captions, as
    the original reports COCO on 1k-image subsets; the cost grows with images x captions).
    """

    def __init__(self, data: TaskData, zero_shot: bool = False, hard_pool: int = 100, cached: bool = True,
                 pair_batch_size: int | None = None, progress: bool = True, eval_images: int | None = None) -> None:
        super().__init__(data)
        if hard_pool < 1:
            raise ValueError(f"hard_pool must be >= 1, got {hard_pool}")
        if eval_images is not None and eval_images < 2:
            raise ValueError(f"eval_images must be >= 2 (or None for the whole split), got {eval_images}")
        self.eval_images = eval_images
        self.zero_shot = zero_shot
        self.hard_pool = hard_pool
        self.cached = cached
        self.pair_batch_size = pair_batch_size
        self.progress = progress
        self._splits: dict[str, RetrievalSplit] = {}
        self._nearest: dict[str, torch.Tensor] = {}

    @property
    def score_head(self) -> str:
        return "alignment" if self.zero_shot else "pair_score"

    def required_heads(self) -> dict[str, dict]:
        return {self.score_head: {}}

    def split(self, split: str) -> RetrievalSplit:
        if split not in self._splits:
            path = f"{self.data.data_dir}/{split}.jsonl"
            images = read_flickr30k(path)
            if split != "train" and self.eval_images is not None:
                images = images[: self.eval_images]
            if len(images) < 2:
                raise ValueError(f"{path}: retrieval needs at least 2 images, found {len(images)}")
            captions = [c for im in images for c in im.captions]
            owner = [i for i, im in enumerate(images) for _ in im.captions]
            first = np.cumsum([0] + [len(im.captions) for im in images[:-1]]).tolist()
            self._splits[split] = RetrievalSplit(images, captions, torch.tensor(owner, dtype=torch.long), first)
        return self._splits[split]

    def nearest(self, split: str) -> torch.Tensor:
        """[Ni,K] the hard-negative pool of every image of `split` (computed once)."""
        if split not in self._nearest:
            images = self.split(split).images
            means = []
            for start in range(0, len(images), 256):
                chunk = self.store.get_regions([im.image_id for im in images[start : start + 256]])
                means += [torch.from_numpy(r.features[: self.data.max_regions].mean(0)) for r in chunk]
            self._nearest[split] = nearest_images(torch.stack(means), min(self.hard_pool, len(images) - 1))
        return self._nearest[split]

    def dataset(self, split: str) -> list[CaptionRow]:
        data = self.split(split)
        owners = data.caption_image.tolist()
        return [CaptionRow(split, image, c) for c, image in enumerate(owners)]

    def _random_caption(self, data: RetrievalSplit, image: int) -> int:
        return data.first_caption[image] + int(torch.randint(len(data.images[image].captions), ()))

    def _other_image(self, n: int, image: int) -> int:
        j = int(torch.randint(n - 1, ()))
        return j + (j >= image)  # uniform over the other n - 1 images

    def choices(self, row: CaptionRow) -> list[tuple[int, int]]:
        """The 4 (caption index, image index) pairs of one training caption, true pair first.
        Random draws use torch's RNG, which the trainer seeds per step."""
        data, i = self.split(row.split), row.image
        n = len(data.images)
        pool = self.nearest(row.split)[i]
        hard = int(pool[int(torch.randint(len(pool), ()))])
        return [
            (row.caption, i),
            (self._random_caption(data, self._other_image(n, i)), i),
            (row.caption, self._other_image(n, i)),
            (self._random_caption(data, hard), i),
        ]

    def collate(self, examples: Sequence[CaptionRow]) -> Batch:
        if self.zero_shot:
            raise RuntimeError("zero-shot retrieval is evaluation only: it scores with the pretrained "
                               "alignment head and has no training rows")
        pairs = [p for row in examples for p in self.choices(row)]  # [Q*4]
        data = self.split(examples[0].split)
        ids = [data.images[i].image_id for _, i in pairs]
        unique = sorted(set(ids))
        read = self.regions(unique)
        index = torch.tensor([unique.index(x) for x in ids])
        regions = RegionBatch(read.features[index], read.locations[index], read.mask[index])
        return self.make_batch([data.captions[c] for c, _ in pairs], ids, regions=regions,
                               targets={"label": torch.zeros(len(examples), dtype=torch.long)},
                               meta={"pairs": pairs})

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        scores = model(**batch.model_inputs(), heads=("pair_score",)).logits["pair_score"]
        scores = scores.view(-1, CHOICES)  # [Q*4] -> [Q,4], choice 0 = the true pair
        loss = F.cross_entropy(scores.float(), batch.targets["label"])
        acc = (scores.detach().argmax(1) == batch.targets["label"]).float().mean()
        return loss, {"accuracy": float(acc)}

    def inputs(self, split: str) -> tuple[TextInputs, ImageInputs]:
        """Every caption and every image of `split` once, as the scorer takes them."""
        data = self.split(split)
        ids, types, mask = self.encode_texts(data.captions)
        regions = self.regions([im.image_id for im in data.images])
        return TextInputs(ids, types, mask), ImageInputs(regions.features, regions.locations, regions.mask)

    def scores(self, model: nn.Module, split: str, batch_size: int = 64, cached: bool | None = None) -> torch.Tensor:
        """The full caption x image score matrix [Nt,Ni] of `split`."""
        text, images = self.inputs(split)
        return score_matrix(unwrap_model(model), text, images, head=self.score_head,
                            cached=self.cached if cached is None else cached,
                            batch_size=self.pair_batch_size or batch_size, progress=self.progress)

    def evaluate(self, model: nn.Module, split: str, batch_size: int = 64) -> dict[str, float]:
        """Recall@1/5/10 for image retrieval (ir_rK) and text retrieval (tr_rK) over the split (or its
        first `eval_images` images)."""
        return recalls(self.scores(model, split, batch_size), self.split(split).caption_image)


@register_task("zero_shot_retrieval", RECIPE)  # evaluation only: the recipe gives its data and text length
class ZeroShotRetrievalTask(RetrievalTask):
    """Retrieval scored by the pretrained alignment head, with no fine-tuning."""

    def __init__(self, data: TaskData, **options) -> None:
        options.setdefault("zero_shot", True)
        super().__init__(data, **options)

