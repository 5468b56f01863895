"""Retrieval in two stages: a first stage whose embeddings are computed once per item, then
ViLBERT's pair score on each query's top k only.

First stage: every caption is embedded by the text stream alone and every image by the visual
stream alone (`ViLBert.embed_text` / `embed_images`, the model's contrastive head), and a pair's
score is the dot product of the two unit vectors: N_captions + N_images forwards and one matmul,
instead of N_captions x N_images pair forwards.

Second stage, both directions at once: image retrieval keeps each caption's k best images, text
retrieval each image's k best captions; the union of those pairs is scored by ViLBERT
(`pair_cache.score_pairs`, the per-caption / per-image prefix cache included), caption-major, in
the same batches an exhaustive `score_matrix` would use, so with k = N every score is
bit-identical to the exhaustive one.

Dimension letters: Nt captions, Ni images, E embedding width, P pairs re-scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from vilbert.core.runtime import evaluating, model_device
from vilbert.model.pair_cache import ImageInputs, TextInputs, score_pairs
from vilbert.model.vilbert import ViLBert

Tensor = torch.Tensor


def _in_chunks(model: ViLBert, n: int, batch_size: int, embed: Callable[[slice, torch.device], Tensor]) -> Tensor:
    """embed(rows, device) -> [b,E] over consecutive chunks of n rows, concatenated, in eval mode."""
    device = model_device(model)
    with evaluating(model):
        return torch.cat([embed(slice(start, start + batch_size), device).float() for start in range(0, n, batch_size)])


def embed_texts(model: ViLBert, text: TextInputs, batch_size: int = 256, head: str = "contrastive") -> Tensor:
    """Every caption's first-stage embedding [Nt,E] (unit vectors, float32, on the model's device)."""
    def embed(s: slice, device: torch.device) -> Tensor:
        length = int(text.attention_mask[s].sum(1).max())  # trim the chunk's padding to its longest caption
        ids, types, mask = (t[s, :length].to(device) for t in (text.input_ids, text.token_type_ids, text.attention_mask))
        return model.embed_text(ids, types, mask, head)
    return _in_chunks(model, len(text), batch_size, embed)


def embed_images(model: ViLBert, images: ImageInputs, batch_size: int = 256, head: str = "contrastive") -> Tensor:
    """Every image's first-stage embedding [Ni,E] (unit vectors, float32, on the model's device)."""
    def embed(s: slice, device: torch.device) -> Tensor:
        rows = int(images.image_mask[s].sum(1).max())  # trim to the chunk's largest region count
        features, locations, mask = (t[s, :rows].to(device) for t in
                                     (images.image_features, images.image_locations, images.image_mask))
        return model.embed_images(features, locations, mask, head)
    return _in_chunks(model, len(images), batch_size, embed)


@dataclass
class TwoStageScores:
    """What a two-stage ranking saw: first-stage scores for every pair, and ViLBERT's for the
    re-ranked ones (NaN elsewhere)."""

    first: Tensor  # [Nt,Ni] embedding dot products
    image_candidates: Tensor  # [Nt,Ni] bool: image retrieval re-ranks these (each caption's top k images)
    text_candidates: Tensor  # [Nt,Ni] bool: text retrieval re-ranks these (each image's top k captions)
    rescored: Tensor  # [Nt,Ni] ViLBERT's score where either direction re-ranks the pair, NaN elsewhere
    k: int

    @property
    def pairs(self) -> int:
        """ViLBERT pair scores computed (the union of both directions' candidates)."""
        return int((self.image_candidates | self.text_candidates).sum())


def first_stage_scores(model: ViLBert, text: TextInputs, images: ImageInputs, batch_size: int = 256) -> Tensor:
    """[Nt,Ni] dot products of the caption and image embeddings (float32, on the model's device)."""
    return embed_texts(model, text, batch_size) @ embed_images(model, images, batch_size).T


def top_k_candidates(first: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """first [Nt,Ni], k -> (each caption's k best images, each image's k best captions) as bool
    [Nt,Ni] masks; k is clamped to the number of images / captions."""
    if k < 1:
        raise ValueError(f"the re-ranking depth k must be >= 1, got {k}")
    n_text, n_images = first.shape
    image_candidates = torch.zeros_like(first, dtype=torch.bool)
    image_candidates.scatter_(1, first.topk(min(k, n_images), dim=1).indices, True)
    text_candidates = torch.zeros_like(first, dtype=torch.bool)
    text_candidates.scatter_(0, first.topk(min(k, n_text), dim=0).indices, True)
    return image_candidates, text_candidates


def two_stage_scores(model: ViLBert, text: TextInputs, images: ImageInputs, k: int, head: str = "pair_score",
                     cached: bool = True, batch_size: int = 256, embed_batch_size: int = 256,
                     progress: bool = False, first: Tensor | None = None) -> TwoStageScores:
    """First stage over every pair, then ViLBERT's `head` on each query's top k in both directions.

    `first` reuses first-stage scores already computed (the caller then times the embedding apart).
    """
    if first is None:
        first = first_stage_scores(model, text, images, embed_batch_size)
    image_candidates, text_candidates = top_k_candidates(first, k)
    flat = (image_candidates | text_candidates).flatten().nonzero().squeeze(1)  # [P] ascending: caption-major
    rescored = torch.full(first.shape, float("nan"), device=first.device)
    rescored.view(-1)[flat] = score_pairs(model, text, images, flat, head, cached, batch_size, progress).to(first.device)
    return TwoStageScores(first, image_candidates, text_candidates, rescored, k)
