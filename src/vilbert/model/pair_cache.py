"""Score many (caption, image) pairs fast: each caption's and each image's unpaired work is done once.

In ViLBERT the two streams do not meet before the first co-attention layer, so a caption's
embeddings and the text layers before that layer depend on the caption alone, and an image's
embeddings (and any visual layers before it) on the image alone. A full retrieval evaluation
scores every caption against every image (N_images x N_captions pairs); computing those prefixes
once per caption and once per image, then running only the rest of the encoder per pair, gives
the same scores as the plain forward (padding never changes a real position's output, and the
pair scores read only real positions) at a fraction of the cost.

The single-stream baseline concatenates words and regions from its first layer, so nothing can be
shared: it falls back to the plain forward over batched pairs.

Dimension letters: Nt captions, Ni images, P pairs in a batch, T tokens, R region rows ([IMG]
included), Dt / Dv stream widths, D region feature width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from vilbert.core.runtime import evaluating, model_device
from vilbert.model.layers import key_mask
from vilbert.model.vilbert import TwoStreamEncoder, ViLBert

Tensor = torch.Tensor

SCORE_HEADS = ("pair_score", "alignment")


@dataclass
class TextInputs:
    """Every caption once: ids, token types and mask [Nt,T] (padded to the longest caption)."""

    input_ids: Tensor
    token_type_ids: Tensor
    attention_mask: Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class ImageInputs:
    """Every image once: features [Ni,R,D], locations [Ni,R,5], mask [Ni,R]."""

    image_features: Tensor
    image_locations: Tensor
    image_mask: Tensor

    def __len__(self) -> int:
        return int(self.image_features.shape[0])


def head_score(model: ViLBert, head: str, fused: Tensor) -> Tensor:
    """fused [P,Hb] -> one score per pair [P] from `head` (eval mode: no dropout on `fused`).

    "pair_score": the fine-tuned retrieval score (the original's vil_logit). "alignment": the
    pretrained alignment head, scored as log P(aligned) (index 0): the original ranks zero-shot
    retrieval by softmax(...)[:, 0], and its logarithm ranks the same without underflow.
    """
    check_score_head(model, head)
    return logits_to_score(head, model.heads[head](model.fused_dropout(fused)))


def check_score_head(model: ViLBert, head: str) -> None:
    if head not in SCORE_HEADS:
        raise ValueError(f"pair scores come from one of {SCORE_HEADS}, not {head!r}")
    if head not in model.heads:
        raise KeyError(f"model has no head {head!r}; its heads: {', '.join(model.heads) or '(none)'}")


def logits_to_score(head: str, logits: Tensor) -> Tensor:
    """pair_score logits [P] stay as they are; alignment logits [P,2] -> log P(aligned) [P]."""
    return logits if head == "pair_score" else F.log_softmax(logits.float(), dim=-1)[:, 0]


def plain_pair_scores(model: ViLBert, text: TextInputs, images: ImageInputs, t_idx: Tensor, i_idx: Tensor,
                      head: str) -> Tensor:
    """The uncached reference: the model's own forward on pairs (caption t_idx[p], image i_idx[p])."""
    t_len = int(text.attention_mask[t_idx].sum(1).max())  # trim the pairs to their longest caption
    r_len = int(images.image_mask[i_idx].sum(1).max())
    out = model(
        input_ids=text.input_ids[t_idx, :t_len],
        token_type_ids=text.token_type_ids[t_idx, :t_len],
        attention_mask=text.attention_mask[t_idx, :t_len],
        image_features=images.image_features[i_idx, :r_len],
        image_locations=images.image_locations[i_idx, :r_len],
        image_mask=images.image_mask[i_idx, :r_len],
        heads=(head,),
    )
    return logits_to_score(head, out.logits[head])


class CachedPairScorer:
    """Per-caption and per-image prefixes computed once, then the rest of the encoder per pair.

    Padding is trimmed per pair batch to its longest caption and largest region count, so the
    per-pair cost follows the real lengths. Requires a two-stream model in eval mode.
    """

    def __init__(self, model: ViLBert, text: TextInputs, images: ImageInputs, chunk: int = 256):
        if not isinstance(model.encoder, TwoStreamEncoder):
            raise TypeError("CachedPairScorer needs a two-stream ViLBERT; use plain_pair_scores for "
                            f"{type(model.encoder).__name__}")
        if model.training:
            raise RuntimeError("CachedPairScorer needs the model in eval mode (dropout off); call model.eval()")
        self.model = model
        encoder = model.encoder
        # The first segment holds the text and visual layers that run before co-attention layer 0.
        self.first_text, self.first_visual = encoder.segments[0]
        self.text_mask = model.extend_text_mask(text.attention_mask)  # with a task token, T + 1
        self.image_mask = images.image_mask.bool()
        self.text_lengths = self.text_mask.sum(1)
        self.image_lengths = self.image_mask.sum(1)
        self.text_states = self._prefix(
            len(text), chunk,
            lambda s: model.text_inputs(text.input_ids[s], text.token_type_ids[s], text.attention_mask[s])[0],
            self.text_mask, encoder.text_layers, self.first_text,
        )  # [Nt,T,Dt]
        self.image_states = self._prefix(
            len(images), chunk,
            lambda s: model.image_embeddings(images.image_features[s], images.image_locations[s]),
            self.image_mask, encoder.visual_layers, self.first_visual,
        )  # [Ni,R,Dv]

    @staticmethod
    def _prefix(n: int, chunk: int, embed: Callable[[slice], Tensor], mask: Tensor, layers: nn.ModuleList,
                which: range) -> Tensor:
        parts = []
        for start in range(0, n, chunk):
            s = slice(start, start + chunk)
            x, m = embed(s), key_mask(mask[s])
            for i in which:
                x, _ = layers[i](x, m)
            parts.append(x)
        return torch.cat(parts)

    def score(self, t_idx: Tensor, i_idx: Tensor, head: str) -> Tensor:
        """Scores [P] of pairs (caption t_idx[p], image i_idx[p])."""
        model, encoder = self.model, self.model.encoder
        t_len = int(self.text_lengths[t_idx].max())
        r_len = int(self.image_lengths[i_idx].max())
        text = self.text_states[t_idx, :t_len]  # [P,T,Dt]
        image = self.image_states[i_idx, :r_len]  # [P,R,Dv]
        t_mask = key_mask(self.text_mask[t_idx, :t_len])
        v_mask = key_mask(self.image_mask[i_idx, :r_len])
        for k, (t_range, v_range) in enumerate(encoder.segments):
            if k > 0:  # segment 0's layers are in the cache
                for i in t_range:
                    text, _ = encoder.text_layers[i](text, t_mask)
                for i in v_range:
                    image, _ = encoder.visual_layers[i](image, v_mask)
            if k < len(encoder.co_layers):
                text, image, _, _ = encoder.co_layers[k](text, t_mask, image, v_mask)
        fused = model.text_pooler(text) * model.image_pooler(image)
        return head_score(model, head, fused)


def score_pairs(model: ViLBert, text: TextInputs, images: ImageInputs, flat: Tensor, head: str = "pair_score",
                cached: bool = True, batch_size: int = 256, progress: bool = False) -> Tensor:
    """Scores [P] (float32, on the model's device) of the pairs `flat` names, caption-major
    (pair p = caption flat[p] // Ni with image flat[p] % Ni), scored in batches of `batch_size`
    in the order given.

    `score_matrix` is this over every pair, so a caller that passes all pairs in order (e.g. a
    re-ranking whose candidates are everything) gets bit-identical scores. `cached=True` uses
    `CachedPairScorer` for a two-stream model (the single-stream baseline always takes the plain
    forward). The model is put in eval mode for the duration.
    """
    device = model_device(model)
    text = TextInputs(*(t.to(device) for t in (text.input_ids, text.token_type_ids, text.attention_mask)))
    images = ImageInputs(*(t.to(device) for t in (images.image_features, images.image_locations, images.image_mask)))
    check_score_head(model, head)
    flat = flat.to(device=device, dtype=torch.long)
    n_images = len(images)
    out = torch.empty(len(flat), dtype=torch.float32, device=device)
    with evaluating(model):
        use_cache = cached and isinstance(model.encoder, TwoStreamEncoder)
        scorer = CachedPairScorer(model, text, images) if use_cache else None
        bar = tqdm(total=len(flat), desc="scoring pairs", unit="pair", disable=not progress)
        for start in range(0, len(flat), batch_size):
            chunk = flat[start : start + batch_size]
            t_idx, i_idx = chunk // n_images, chunk % n_images
            if scorer is not None:
                scores = scorer.score(t_idx, i_idx, head)
            else:
                scores = plain_pair_scores(model, text, images, t_idx, i_idx, head)
            out[start : start + len(chunk)] = scores.float()
            bar.update(len(chunk))
        bar.close()
    return out


def score_matrix(model: ViLBert, text: TextInputs, images: ImageInputs, head: str = "pair_score",
                 cached: bool = True, batch_size: int = 256, progress: bool = False) -> Tensor:
    """Scores of every caption with every image -> [Nt,Ni] (float32, on the model's device):
    `score_pairs` over all pairs, caption-major."""
    flat = torch.arange(len(text) * len(images))
    scores = score_pairs(model, text, images, flat, head, cached, batch_size, progress)
    return scores.view(len(text), len(images))  # [Nt,Ni]
