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

The dual-encoder view (`contrastive_weight` > 0 adds its loss, `vilbert.tasks.contrastive`, over
the batch's true pairs) gives a first stage: with `rerank_top=K` evaluation ranks by embedding
dot products, then ViLBERT re-scores each query's K best only (`vilbert.model.two_stage`), and
reports (flat keys, for the trainer's logs and `vilbert evaluate`):
    ir_rK, tr_rK              the two-stage recalls (the evaluation's result); seconds, pairs: its
                              wall time (first stage included) and ViLBERT pair scores computed
    first_stage_*             the first stage alone (its recalls, seconds; pairs 0)
    exhaustive_*              with `exhaustive=True`: every pair scored, and speedup (its seconds
                              over the two-stage's)
A query's re-ranked candidates rank above the rest, and the rest keep their first-stage order,
so with K = N the two-stage ranking is the exhaustive one, exactly.

Dimension letters: Q training captions in a batch, Nt captions, Ni images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vilbert.core.batch import Batch
from vilbert.core.regions import RegionBatch
from vilbert.core.runtime import model_device, unwrap_model
from vilbert.data.readers.flickr30k import RetrievalImage, read_flickr30k
from vilbert.model.pair_cache import ImageInputs, TextInputs, score_matrix
from vilbert.model.two_stage import TwoStageScores, first_stage_scores, two_stage_scores
from vilbert.tasks.common import RegionTextTask, TaskData
from vilbert.tasks.contrastive import HEAD as CONTRASTIVE, contrastive_loss, positive_pairs
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


def _at_or_above(scores: torch.Tensor, tier: torch.Tensor | None, ref_score: torch.Tensor,
                 ref_tier: torch.Tensor | None) -> torch.Tensor:
    """Candidates ranked at or above a reference: by tier first (re-ranked above the rest), then score."""
    if tier is None:
        return scores >= ref_score
    return (tier > ref_tier) | ((tier == ref_tier) & (scores >= ref_score))


def image_retrieval_recall(scores: torch.Tensor, caption_image: torch.Tensor, ks: Sequence[int] = KS,
                           tier: torch.Tensor | None = None) -> dict[str, float]:
    """scores [Nt,Ni], caption_image [Nt] -> ir_rK: share of captions whose image ranks < K.
    `tier` ([Nt,Ni] bool, optional) ranks True before False whatever the scores (re-ranked pairs)."""
    true = scores.gather(1, caption_image[:, None])  # [Nt,1]
    true_tier = None if tier is None else tier.gather(1, caption_image[:, None])
    others = torch.ones_like(scores, dtype=torch.bool).scatter_(1, caption_image[:, None], False)
    rank = (_at_or_above(scores, tier, true, true_tier) & others).sum(1)  # [Nt], ties count against the truth
    return {f"ir_r{k}": float((rank < k).float().mean()) for k in ks}


def text_retrieval_recall(scores: torch.Tensor, caption_image: torch.Tensor, ks: Sequence[int] = KS,
                          tier: torch.Tensor | None = None) -> dict[str, float]:
    """scores [Nt,Ni], caption_image [Nt] -> tr_rK: share of images with one of their captions ranked < K.
    `tier` as in `image_retrieval_recall`; an image's best own caption is its best by (tier, score)."""
    n_images = scores.shape[1]
    own = caption_image[:, None] == torch.arange(n_images, device=scores.device)[None]  # [Nt,Ni]
    best_tier = None
    if tier is not None:
        best_tier = tier.masked_fill(~own, False).any(0)[None]  # [1,Ni] an own caption is re-ranked
        own_best = own & (tier == best_tier)
    else:
        own_best = own
    best_own = scores.masked_fill(~own_best, float("-inf")).max(0).values  # [Ni]
    rank = (_at_or_above(scores, tier, best_own[None], best_tier) & ~own).sum(0)  # [Ni] wrong captions at or above
    return {f"tr_r{k}": float((rank < k).float().mean()) for k in ks}


def recalls(scores: torch.Tensor, caption_image: torch.Tensor, ks: Sequence[int] = KS) -> dict[str, float]:
    """Both directions' recall@K from one caption x image score matrix."""
    scores, caption_image = scores.float().cpu(), caption_image.cpu()
    return {**image_retrieval_recall(scores, caption_image, ks), **text_retrieval_recall(scores, caption_image, ks)}


def two_stage_recalls(result: TwoStageScores, caption_image: torch.Tensor, ks: Sequence[int] = KS) -> dict[str, float]:
    """Both directions' recall@K of a two-stage ranking: each query's re-ranked candidates by
    ViLBERT's score, above the rest in their first-stage order."""
    first, rescored, caption_image = result.first.float().cpu(), result.rescored.float().cpu(), caption_image.cpu()
    by_image = result.image_candidates.cpu()
    by_text = result.text_candidates.cpu()
    return {**image_retrieval_recall(torch.where(by_image, rescored, first), caption_image, ks, by_image),
            **text_retrieval_recall(torch.where(by_text, rescored, first), caption_image, ks, by_text)}


@dataclass
class Ranking:
    """One way of ranking a split: its recalls, wall time and the ViLBERT pair scores it computed."""

    recalls: dict[str, float]
    seconds: float
    pairs: int

    def metrics(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": v for k, v in self.recalls.items()} | {f"{prefix}seconds": self.seconds,
                                                                       f"{prefix}pairs": float(self.pairs)}


def _synchronize(model: nn.Module) -> None:
    device = model_device(model)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    the original reports COCO on 1k-image subsets; the cost grows with images x captions),
    `contrastive_weight` (the dual-encoder loss's weight; 0 = the paper's 4-way loss alone),
    `rerank_top` (evaluate in two stages, re-ranking each query's K best; see the module
    docstring) and `exhaustive` (with `rerank_top`: also score every pair, for comparison).
    """

    def __init__(self, data: TaskData, zero_shot: bool = False, hard_pool: int = 100, cached: bool = True,
                 pair_batch_size: int | None = None, progress: bool = True, eval_images: int | None = None,
                 contrastive_weight: float = 0.0, rerank_top: int | None = None, exhaustive: bool = False) -> None:
        super().__init__(data)
        if hard_pool < 1:
            raise ValueError(f"hard_pool must be >= 1, got {hard_pool}")
        if eval_images is not None and eval_images < 2:
            raise ValueError(f"eval_images must be >= 2 (or None for the whole split), got {eval_images}")
        if not contrastive_weight >= 0:
            raise ValueError(f"contrastive_weight must be >= 0, got {contrastive_weight}")
        if rerank_top is not None and (isinstance(rerank_top, bool) or not isinstance(rerank_top, int)
                                       or rerank_top < 1):
            raise ValueError(f"rerank_top must be a whole number >= 1 (or None: score every pair), got {rerank_top!r}")
        if exhaustive and rerank_top is None:
            raise ValueError("exhaustive compares a two-stage evaluation with scoring every pair: give rerank_top too")
        self.contrastive_weight = contrastive_weight
        self.rerank_top = rerank_top
        self.exhaustive = exhaustive
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
        heads: dict[str, dict] = {self.score_head: {}}
        if self.contrastive_weight > 0:
            heads[CONTRASTIVE] = {}
        return heads

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
        targets = {"label": torch.zeros(len(examples), dtype=torch.long)}
        if self.contrastive_weight > 0:  # the true pairs (choice 0) against each other
            targets["dual_positives"] = positive_pairs([data.captions[row.caption] for row in examples],
                                                       [row.image for row in examples])
        return self.make_batch([data.captions[c] for c, _ in pairs], ids, regions=regions,
                               targets=targets, meta={"pairs": pairs})

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """4-way cross-entropy (+ contrastive_weight x the contrastive loss over the true pairs)."""
        inputs = batch.model_inputs()
        if self.contrastive_weight > 0:
            true_pairs = {name: value[::CHOICES] for name, value in inputs.items()}  # [Q*4,...] -> [Q,...]
            out = model(**inputs, heads=("pair_score", CONTRASTIVE), dual_inputs=true_pairs)
        else:
            out = model(**inputs, heads=("pair_score",))
        scores = out.logits["pair_score"].view(-1, CHOICES)  # [Q*4] -> [Q,4], choice 0 = the true pair
        loss = F.cross_entropy(scores.float(), batch.targets["label"])
        acc = (scores.detach().argmax(1) == batch.targets["label"]).float().mean()
        stats = {"accuracy": float(acc)}
        if self.contrastive_weight > 0:
            dual, dual_acc = contrastive_loss(out.logits[CONTRASTIVE], batch.targets["dual_positives"])
            stats.update(four_way_loss=float(loss.detach()), contrastive_loss=float(dual.detach()),
                         contrastive_acc=float(dual_acc))
            loss = loss + self.contrastive_weight * dual
        return loss, stats

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
        first `eval_images` images); with `rerank_top`, in two stages (module docstring)."""
        if self.rerank_top is None:
            return recalls(self.scores(model, split, batch_size), self.split(split).caption_image)
        first = self.first_stage(model, split)
        two = self.two_stage(model, split, self.rerank_top, batch_size)
        metrics = two.recalls | {"rerank_top": float(self.rerank_top), "seconds": two.seconds,
                                 "pairs": float(two.pairs)} | first.metrics("first_stage_")
        if self.exhaustive:
            every = self.exhaustive_ranking(model, split, batch_size)
            metrics |= every.metrics("exhaustive_") | {"speedup": every.seconds / max(two.seconds, 1e-9)}
        return metrics

    # -- the rankings compared: each timed from the split's inputs (read once) to its recalls ------

    def first_stage(self, model: nn.Module, split: str) -> Ranking:
        """Embedding dot products alone: no pair is scored by ViLBERT."""
        text, images = self.inputs(split)
        model = unwrap_model(model)
        start = time.perf_counter()
        first = first_stage_scores(model, text, images)
        _synchronize(model)
        seconds = time.perf_counter() - start
        return Ranking(recalls(first, self.split(split).caption_image), seconds, 0)

    def two_stage(self, model: nn.Module, split: str, k: int, batch_size: int = 64) -> Ranking:
        """The first stage, then ViLBERT's score on each query's k best, both directions."""
        text, images = self.inputs(split)
        model = unwrap_model(model)
        start = time.perf_counter()
        result = two_stage_scores(model, text, images, k, head=self.score_head, cached=self.cached,
                                  batch_size=self.pair_batch_size or batch_size, progress=self.progress)
        _synchronize(model)
        seconds = time.perf_counter() - start
        return Ranking(two_stage_recalls(result, self.split(split).caption_image), seconds, result.pairs)

    def exhaustive_ranking(self, model: nn.Module, split: str, batch_size: int = 64) -> Ranking:
        """Every caption with every image through ViLBERT."""
        text, images = self.inputs(split)
        model = unwrap_model(model)
        start = time.perf_counter()
        scores = score_matrix(model, text, images, head=self.score_head, cached=self.cached,
                              batch_size=self.pair_batch_size or batch_size, progress=self.progress)
        _synchronize(model)
        seconds = time.perf_counter() - start
        return Ranking(recalls(scores, self.split(split).caption_image), seconds, scores.numel())


@register_task("zero_shot_retrieval", RECIPE)  # evaluation only: the recipe gives its data and text length
class ZeroShotRetrievalTask(RetrievalTask):
    """Retrieval scored by the pretrained alignment head, with no fine-tuning."""

    def __init__(self, data: TaskData, **options) -> None:
        options.setdefault("zero_shot", True)
        super().__init__(data, **options)

