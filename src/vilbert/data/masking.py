"""The pretraining objectives' corruption and the masked-region loss, as pure functions.

Every random choice draws from the `torch.Generator` passed in, so a batch's masking is a function
of (seed, batch) and a resumed or distributed run masks exactly what an uninterrupted one does.

Dimension letters: B batch rows, T text tokens, R regions ([IMG] row 0 included), D feature width,
C detector classes.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = -1  # label of a token that is not predicted (the original's convention)


def _uniform(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    # Draw on the generator's device, then move: a CPU generator keeps results device-independent.
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def mask_words(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    vocab_size: int,
    special_ids: Sequence[int],
    mask_id: int,
    prob: float = 0.15,
    generator: torch.Generator | None = None,
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's word masking: choose `prob` of the real, non-special tokens; of those 80% -> [MASK],
    10% -> a random non-special word piece, 10% unchanged.

    input_ids, attention_mask: [B, T]. `rows` ([B] bool, optional): only these rows are masked
    (pretraining passes the aligned pairs, so misaligned pairs get no masked-word loss).
    Returns (masked ids [B, T], labels [B, T] = original id where chosen, -1 elsewhere).
    """
    if input_ids.shape != attention_mask.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} differ")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"masking probability {prob} is not in [0, 1]")
    device = input_ids.device
    specials = torch.tensor(sorted(set(int(i) for i in special_ids)), dtype=input_ids.dtype, device=device)
    candidates = attention_mask.bool() & ~torch.isin(input_ids, specials)
    if rows is not None:
        candidates &= rows.to(device).bool()[:, None]

    draws = _uniform((3, *input_ids.shape), generator, device)  # chosen?, which action, random word
    chosen = candidates & (draws[0] < prob)
    to_mask = chosen & (draws[1] < 0.8)
    to_random = chosen & (draws[1] >= 0.8) & (draws[1] < 0.9)

    allowed = torch.ones(vocab_size, dtype=torch.bool, device=device)
    allowed[specials[specials < vocab_size]] = False
    allowed_ids = allowed.nonzero().squeeze(1)  # [V'] ids a random replacement may take
    random_words = allowed_ids[(draws[2] * len(allowed_ids)).long().clamp_(max=len(allowed_ids) - 1)]

    masked = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(to_random, random_words.to(input_ids.dtype), masked)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return masked, labels


def mask_regions(
    image_features: torch.Tensor,
    image_mask: torch.Tensor,
    prob: float = 0.15,
    generator: torch.Generator | None = None,
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose `prob` of the real regions (never the [IMG] row 0); of those 90% are zeroed and 10%
    left unchanged.

    image_features [B, R, D], image_mask [B, R]; `rows` [B] bool as in `mask_words`.
    Returns (masked features [B, R, D], chosen [B, R] bool: the regions to predict).
    """
    if image_features.shape[:2] != image_mask.shape:
        raise ValueError(f"image_features {tuple(image_features.shape)} and image_mask {tuple(image_mask.shape)} differ")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"masking probability {prob} is not in [0, 1]")
    device = image_features.device
    candidates = image_mask.bool().clone()
    candidates[:, 0] = False  # [IMG] summarises the image; the original never masks it
    if rows is not None:
        candidates &= rows.to(device).bool()[:, None]
    draws = _uniform((2, *image_mask.shape), generator, device)
    chosen = candidates & (draws[0] < prob)
    zeroed = chosen & (draws[1] < 0.9)
    masked = image_features.masked_fill(zeroed[..., None], 0.0)
    return masked, chosen


def region_kl_loss(pred_logits: torch.Tensor, cls_prob: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """KL(cls_prob || softmax(pred_logits)) summed over classes, averaged over masked regions.

    pred_logits, cls_prob: [B, R, C]; masked: [B, R] bool. With nothing masked the loss is an
    exact 0 that still depends on `pred_logits` (the original divided by zero here).
    """
    if pred_logits.shape != cls_prob.shape:
        raise ValueError(f"region logits {tuple(pred_logits.shape)} and cls_prob {tuple(cls_prob.shape)} differ")
    log_q = F.log_softmax(pred_logits.float(), dim=-1)
    per_region = F.kl_div(log_q, cls_prob.float(), reduction="none").sum(-1)  # [B, R]
    weight = masked.to(per_region.dtype)
    return (per_region * weight).sum() / weight.sum().clamp(min=1.0)

