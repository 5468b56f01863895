"""The paper's single-stream baseline: one BERT over the concatenation of words and regions.

It takes the same inputs and feeds the same heads as ViLBERT: the region embeddings are projected
to the text width, the joint sequence is [words; regions], and the output is split back into a
text sequence and an image sequence.
"""

from __future__ import annotations

import torch
from torch import nn

from vilbert.model.config import ViLBertConfig
from vilbert.model.layers import TransformerLayer

Tensor = torch.Tensor


class SingleStreamEncoder(nn.Module):
    """`num_hidden_layers` BERT layers over words and regions together."""

    def __init__(self, config: ViLBertConfig):
        super().__init__()
        c = config
        self.layers = nn.ModuleList(
            TransformerLayer(
                c.hidden_size, c.num_attention_heads, c.intermediate_size, c.hidden_act,
                c.hidden_dropout_prob, c.attention_probs_dropout_prob, c.layer_norm_eps,
            )
            for _ in range(c.num_hidden_layers)
        )

    def forward(
        self, text: Tensor, text_mask: Tensor, image: Tensor, image_mask: Tensor, need_weights: bool = False
    ) -> tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]] | None]:
        """text [B,T,D], image [B,R,D], masks bool [B,T]/[B,R] -> sequences and cross attentions."""
        t = text.shape[1]
        x = torch.cat([text, image], dim=1)  # [B,T+R,D]
        joint = torch.cat([text_mask, image_mask], dim=1)  # [B,T+R]
        mask = None if bool(joint.all()) else joint[:, None, None, :]
        crosses: list[tuple[Tensor, Tensor]] | None = [] if need_weights else None
        for layer in self.layers:
            x, probs = layer(x, mask, need_weights)
            if crosses is not None:
                # The text->image and image->text blocks of the joint attention [B,H,T+R,T+R].
                crosses.append((probs[:, :, :t, t:], probs[:, :, t:, :t]))
        return x[:, :t], x[:, t:], crosses

    def text_only(self, text: Tensor, text_mask: Tensor) -> Tensor:
        """Words alone through the shared layers (the dual-encoder view)."""
        return self._alone(text, text_mask)  # [B,T,D]

    def image_only(self, image: Tensor, image_mask: Tensor) -> Tensor:
        """Regions alone through the shared layers."""
        return self._alone(image, image_mask)  # [B,R,D]

    def _alone(self, x: Tensor, mask: Tensor) -> Tensor:
        key = None if bool(mask.all()) else mask[:, None, None, :]
        for layer in self.layers:
            x, _ = layer(x, key)
        return x
