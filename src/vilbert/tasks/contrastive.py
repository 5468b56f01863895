"""The dual-encoder objective shared by pretraining and retrieval fine-tuning: a symmetric
contrastive loss (InfoNCE) over in-batch negatives, on the model's contrastive head.

Row a of a batch is a true (caption, image) pair. Another row's image is a negative for caption a
unless it is the same image, or its caption reads exactly like caption a (the world's templated
captions repeat across images, and a real dataset's short ones do too): such pairs are positives,
not negatives, and the loss of a row is -log(sum over its positives / sum over all), in both
directions (caption -> images, image -> captions), averaged. With one positive per row this is
CLIP's loss.

Dimension letters: B rows.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import torch

HEAD = "contrastive"


def positive_pairs(captions: Sequence[Hashable], images: Sequence[Hashable]) -> torch.Tensor:
    """[B,B] bool: row a's caption and row b's image are a true pair (same image, or the same text)."""
    if len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions but {len(images)} images")
    def same(keys: Sequence[Hashable]) -> torch.Tensor:
        ids = {key: i for i, key in enumerate(dict.fromkeys(keys))}
        index = torch.tensor([ids[key] for key in keys])
        return index[:, None] == index[None, :]
    return same(images) | same(captions)


def contrastive_loss(logits: torch.Tensor, positives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B,B] (caption a vs image b, scaled), positives [B,B] bool (diagonal True) ->
    (mean symmetric loss, caption -> image top-1 accuracy: the best image is a positive)."""
    if logits.shape != positives.shape or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"contrastive logits {tuple(logits.shape)} and positives {tuple(positives.shape)} "
                         "must be the same square shape")
    logits = logits.float()
    positives = positives.to(logits.device).bool()
    masked = logits.masked_fill(~positives, float("-inf"))
    caption_side = logits.logsumexp(1) - masked.logsumexp(1)  # [B]
    image_side = logits.logsumexp(0) - masked.logsumexp(0)  # [B]
    loss = 0.5 * (caption_side.mean() + image_side.mean())
    best = logits.detach().argmax(1)
    accuracy = positives[torch.arange(len(best), device=best.device), best].float().mean()
    return loss, accuracy
