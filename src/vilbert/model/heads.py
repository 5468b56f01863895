"""Task heads. Each reads one of the encoder's outputs, named by its `source`:
"text" (text sequence), "image" (image sequence) or "fused" (pooled_text * pooled_image); the
"dual" source (`ContrastiveHead`) reads each stream run alone, without co-attention.

A head is configured by name in `config.heads` (name -> kwargs). The name picks the head type,
unless the kwargs carry `"type"` (so two VQA heads can coexist, e.g. "gqa": {"type": "vqa",
"num_answers": 1533}).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vilbert.model.config import ViLBertConfig
from vilbert.model.layers import activation

Tensor = torch.Tensor


class Transform(nn.Module):
    """Dense -> activation -> LayerNorm (BERT's prediction-head transform)."""

    def __init__(self, dim: int, act: str, eps: float):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.act = activation(act)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.act(self.dense(x)))


class MaskedWordHead(nn.Module):
    """Masked word prediction; the decoder is the word-embedding matrix (tied), plus a bias."""

    source = "text"

    def __init__(self, config: ViLBertConfig, image_width: int):
        super().__init__()
        self.transform = Transform(config.hidden_size, config.hidden_act, config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: Tensor, word_embeddings: Tensor) -> Tensor:
        return F.linear(self.transform(x), word_embeddings, self.bias)  # [..., V]


class MaskedRegionHead(nn.Module):
    """Masked region prediction: transform -> Linear to the region classes."""

    source = "image"

    def __init__(self, config: ViLBertConfig, image_width: int, num_classes: int | None = None):
        super().__init__()
        act = config.v_hidden_act if config.architecture == "two_stream" else config.hidden_act
        self.transform = Transform(image_width, act, config.layer_norm_eps)
        self.decoder = nn.Linear(image_width, num_classes or config.v_target_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.transform(x))  # [B,R,C]


class AlignmentHead(nn.Module):
    """Is the caption the image's? Linear(fused -> 2); index 0 = aligned, as in the original."""

    source = "fused"

    def __init__(self, config: ViLBertConfig, image_width: int):
        super().__init__()
        self.linear = nn.Linear(config.bi_hidden_size, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


class VQAHead(nn.Module):
    """Answer classifier on the fused vector.

    style "multi_task" (vilbert-multi-task): Linear -> GELU -> LayerNorm -> Linear.
    style "beta" (vilbert_beta): Linear -> ReLU -> dropout -> Linear (its weight norm is folded
    into plain weights at conversion).
    """

    source = "fused"

    def __init__(
        self,
        config: ViLBertConfig,
        image_width: int,
        num_answers: int = 3129,
        hidden: int | None = None,
        style: str = "multi_task",
        dropout: float = 0.5,
        answers: list[str] | None = None,
    ):
        super().__init__()
        if style not in ("multi_task", "beta"):
            raise ValueError(f"VQA head style {style!r} is not 'multi_task' or 'beta'")
        if answers is not None and len(answers) != num_answers:
            raise ValueError(f"VQA head has num_answers={num_answers} but an answer list of {len(answers)}")
        # The answer vocabulary rides in config.json with the head, so a checkpoint directory alone
        # can name its predictions (None for converted checkpoints that never stored it).
        self.answers = list(answers) if answers is not None else None
        hidden = hidden or 2 * config.bi_hidden_size
        self.style = style
        self.fc1 = nn.Linear(config.bi_hidden_size, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12) if style == "multi_task" else None
        self.dropout = nn.Dropout(dropout if style == "beta" else 0.0)
        self.fc2 = nn.Linear(hidden, num_answers)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        h = self.norm(F.gelu(h)) if self.norm is not None else self.dropout(F.relu(h))
        return self.fc2(h)  # [B,A]


class PairScoreHead(nn.Module):
    """One score per (text, image) pair: VCR choices, retrieval (the original's vil_logit)."""

    source = "fused"

    def __init__(self, config: ViLBertConfig, image_width: int):
        super().__init__()
        self.linear = nn.Linear(config.bi_hidden_size, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x).squeeze(-1)  # [B]


class RegionScoreHead(nn.Module):
    """One score per region (referring expressions; the original's vision_logit)."""

    source = "image"

    def __init__(self, config: ViLBertConfig, image_width: int):
        super().__init__()
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.linear = nn.Linear(image_width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.dropout(x)).squeeze(-1)  # [B,R]; padded regions set by the model


class ContrastiveHead(nn.Module):
    """The dual-encoder view: a caption embedding from the text stream alone and an image
    embedding from the visual stream alone (no co-attention), each mean-pooled over its real
    positions, projected to a shared `dim`-wide space and L2-normalised; a learnable temperature
    scales their dot products (CLIP's: initialised to `temperature`, the scale capped at 100).

    Mean pooling, because the shipped all-MiniLM-L6-v2 text stream was trained to give sentence
    embeddings that way; the [IMG] row is pooled with the regions.
    """

    source = "dual"
    MAX_SCALE = 100.0

    def __init__(self, config: ViLBertConfig, image_width: int, dim: int | None = None, temperature: float = 0.07):
        super().__init__()
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ValueError(f"contrastive head dim={dim!r}: expected a whole number >= 1")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"contrastive head temperature={temperature!r}: expected a number > 0")
        dim = dim or config.bi_hidden_size
        self.text_proj = nn.Linear(config.hidden_size, dim)
        self.image_proj = nn.Linear(image_width, dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    @staticmethod
    def _pool(sequence: Tensor, mask: Tensor) -> Tensor:
        weights = mask.to(sequence.dtype)[..., None]  # [B,L,1]
        return (sequence * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # [B,D]

    def embed_text(self, sequence: Tensor, mask: Tensor) -> Tensor:
        """text-only sequence [B,T,Dt], mask [B,T] -> unit vectors [B,E]."""
        return F.normalize(self.text_proj(self._pool(sequence, mask)), dim=-1)

    def embed_image(self, sequence: Tensor, mask: Tensor) -> Tensor:
        """image-only sequence [B,R,Dv], mask [B,R] -> unit vectors [B,E]."""
        return F.normalize(self.image_proj(self._pool(sequence, mask)), dim=-1)

    def scale(self) -> Tensor:
        return self.logit_scale.clamp(max=math.log(self.MAX_SCALE)).exp()

    def forward(self, text: Tensor, image: Tensor) -> Tensor:
        """Unit text [Bt,E] and image [Bi,E] embeddings -> scaled similarities [Bt,Bi]."""
        return self.scale() * text @ image.T


HEAD_TYPES: dict[str, type[nn.Module]] = {
    "masked_word": MaskedWordHead,
    "masked_region": MaskedRegionHead,
    "alignment": AlignmentHead,
    "vqa": VQAHead,
    "pair_score": PairScoreHead,
    "region_score": RegionScoreHead,
    "contrastive": ContrastiveHead,
}


def build_head(name: str, kwargs: dict[str, Any], config: ViLBertConfig, image_width: int) -> nn.Module:
    """Construct head `name` from its config kwargs (an unknown type lists the valid ones)."""
    kwargs = dict(kwargs)
    kind = kwargs.pop("type", name)
    if kind not in HEAD_TYPES:
        raise KeyError(f"unknown head type {kind!r} (head {name!r}); valid types: {', '.join(HEAD_TYPES)}")
    try:
        return HEAD_TYPES[kind](config, image_width, **kwargs)
    except TypeError as err:
        raise TypeError(f"bad arguments {kwargs} for head {name!r} of type {kind!r}: {err}") from err
