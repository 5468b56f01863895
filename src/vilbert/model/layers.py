"""Building blocks shared by both streams, the co-attention layer and the single-stream baseline.

Dimension letters: B batch, L query length, S key length, H heads, E head width (W / H),
W attention width, D stream width, F feed-forward width.

One projection (`QKV`) and one attention function (`attend`) serve self-attention and
co-attention: a co-attention layer is two `QKV` projections whose queries are swapped before
`attend`. Masks are boolean `[B, 1, 1, S]` (True = a real key) or None when nothing is padded
(checked on CPU only); a padded key gets exactly zero weight, so padding never changes a real
position's output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


def activation(name: str):
    """The activation function called `name` in the config ("gelu" is BERT's exact erf GELU)."""
    if name == "gelu":
        return F.gelu
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(f"unknown activation {name!r}; valid: gelu, gelu_tanh, relu")


def key_mask(mask: Tensor) -> Tensor | None:
    """[B, S] 1/0 (or bool) -> bool [B, 1, 1, S] for `attend`, or None when nothing is padded.

    The "nothing padded" test reads the mask's values, which on an accelerator would stall the
    host once per forward; there the mask is kept (the kernels take it at no real cost). Under
    torch.compile it is kept too: a branch on a value breaks the graph in every layer.
    """
    mask = mask.bool()
    if mask.device.type == "cpu" and not torch.compiler.is_compiling() and bool(mask.all()):
        return None  # lets SDPA pick its fastest kernel
    return mask[:, None, None, :]


def attend(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float = 0.0, need_weights: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Scaled dot-product attention. q [B,H,L,E], k/v [B,H,S,E] -> context [B,L,H*E], probs.

    Two paths compute the same formula, softmax(q k^T / sqrt(E), masked) -> dropout -> @ v:
    the fused kernel (`F.scaled_dot_product_attention`) when no dropout is applied, and the
    explicit one when the caller needs the probabilities or applies dropout (on CPU, SDPA with
    dropout falls back to a composite path that is slower than the explicit one at these
    lengths). Probabilities are returned before dropout.
    """
    b, h, length, e = q.shape
    if need_weights or (dropout_p > 0.0 and q.device.type == "cpu"):
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(e))  # [B,H,L,S]
        if mask is not None:
            scores = scores.masked_fill(mask.logical_not(), torch.finfo(scores.dtype).min)
        probs = scores.softmax(dim=-1)
        context = F.dropout(probs, dropout_p) @ v  # [B,H,L,E]
        probs = probs if need_weights else None
    else:
        probs = None
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return context.transpose(1, 2).reshape(b, length, h * e), probs  # [B,L,H*E]


class QKV(nn.Module):
    """Queries, keys and values of one stream in one matmul: [B,L,D] -> 3 x [B,H,L,E]."""

    def __init__(self, dim: int, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"attention width {width} is not a multiple of {heads} heads")
        self.heads = heads
        self.proj = nn.Linear(dim, 3 * width)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, length, _ = x.shape
        qkv = self.proj(x).view(b, length, 3, self.heads, -1)  # [B,L,3,H,E]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B,H,L,E]
        return q, k, v


class AddNorm(nn.Module):
    """Linear -> dropout -> residual -> LayerNorm (BERT's "output" sub-block)."""

    def __init__(self, in_dim: int, dim: int, dropout: float, eps: float):
        super().__init__()
        self.dense = nn.Linear(in_dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.norm(residual + self.dropout(self.dense(x)))


class FeedForward(nn.Module):
    """BERT's intermediate + output: Linear -> act -> Linear -> dropout -> residual -> LayerNorm."""

    def __init__(self, dim: int, hidden: int, act: str, dropout: float, eps: float):
        super().__init__()
        self.fc = nn.Linear(dim, hidden)
        self.act = activation(act)
        self.out = AddNorm(hidden, dim, dropout, eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.act(self.fc(x)), x)


class TransformerLayer(nn.Module):
    """One BERT layer: self-attention block, then feed-forward block."""

    def __init__(
        self, dim: int, heads: int, ffn: int, act: str, dropout: float, attn_dropout: float, eps: float
    ):
        super().__init__()
        self.qkv = QKV(dim, dim, heads)
        self.attn_out = AddNorm(dim, dim, dropout, eps)
        self.ffn = FeedForward(dim, ffn, act, dropout, eps)
        self.attn_dropout = attn_dropout

    def forward(self, x: Tensor, mask: Tensor | None, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        q, k, v = self.qkv(x)
        p = self.attn_dropout if self.training else 0.0
        context, probs = attend(q, k, v, mask, p, need_weights)
        return self.ffn(self.attn_out(context, x)), probs


class CoAttentionLayer(nn.Module):
    """Co-TRM: text queries attend over image keys/values and image queries over text ones.

    Each context goes through its own dense + dropout + residual + LayerNorm into its own stream,
    then each stream runs its own feed-forward block. The attention width (`bi_hidden_size`) may
    differ from both stream widths.
    """

    def __init__(
        self,
        text_dim: int,
        image_dim: int,
        width: int,
        heads: int,
        text_ffn: int,
        image_ffn: int,
        text_act: str,
        image_act: str,
        text_dropout: float,
        image_dropout: float,
        text_attn_dropout: float,
        image_attn_dropout: float,
        eps: float,
    ):
        super().__init__()
        self.text_qkv = QKV(text_dim, width, heads)
        self.image_qkv = QKV(image_dim, width, heads)
        self.text_out = AddNorm(width, text_dim, text_dropout, eps)
        self.image_out = AddNorm(width, image_dim, image_dropout, eps)
        self.text_ffn = FeedForward(text_dim, text_ffn, text_act, text_dropout, eps)
        self.image_ffn = FeedForward(image_dim, image_ffn, image_act, image_dropout, eps)
        # The original drops text->image probabilities at the visual rate and vice versa.
        self.text_attn_dropout, self.image_attn_dropout = text_attn_dropout, image_attn_dropout

    def forward(
        self,
        text: Tensor,
        text_mask: Tensor | None,
        image: Tensor,
        image_mask: Tensor | None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """-> text [B,T,Dt], image [B,R,Dv], text->image probs [B,H,T,R], image->text [B,H,R,T]."""
        tq, tk, tv = self.text_qkv(text)
        iq, ik, iv = self.image_qkv(image)
        p_t2i = self.image_attn_dropout if self.training else 0.0
        p_i2t = self.text_attn_dropout if self.training else 0.0
        text_ctx, t2i = attend(tq, ik, iv, image_mask, p_t2i, need_weights)  # [B,T,W]
        image_ctx, i2t = attend(iq, tk, tv, text_mask, p_i2t, need_weights)  # [B,R,W]
        text = self.text_ffn(self.text_out(text_ctx, text))
        image = self.image_ffn(self.image_out(image_ctx, image))
        return text, image, t2i, i2t


class TextEmbeddings(nn.Module):
    """Word + position + segment embeddings -> LayerNorm -> dropout (BERT's)."""

    def __init__(self, vocab: int, dim: int, positions: int, types: int, dropout: float, eps: float):
        super().__init__()
        self.word = nn.Embedding(vocab, dim)
        self.position = nn.Embedding(positions, dim)
        self.token_type = nn.Embedding(types, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        length = input_ids.shape[1]
        if length > self.position.num_embeddings:
            raise ValueError(f"text of {length} tokens exceeds max_position_embeddings {self.position.num_embeddings}")
        positions = torch.arange(length, device=input_ids.device)
        x = self.word(input_ids) + self.position(positions)[None] + self.token_type(token_type_ids)
        return self.dropout(self.norm(x))


class ImageEmbeddings(nn.Module):
    """Region feature + 5-d location, each linearly embedded, summed -> LayerNorm -> dropout."""

    def __init__(self, feature_dim: int, dim: int, dropout: float, eps: float):
        super().__init__()
        self.features = nn.Linear(feature_dim, dim)
        self.locations = nn.Linear(5, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: Tensor, locations: Tensor) -> Tensor:
        return self.dropout(self.norm(self.features(features) + self.locations(locations)))


class Pooler(nn.Module):
    """First token -> Linear -> ReLU (the original's t_pooler / v_pooler)."""

    def __init__(self, dim: int, out: int):
        super().__init__()
        self.dense = nn.Linear(dim, out)

    def forward(self, sequence: Tensor) -> Tensor:
        return F.relu(self.dense(sequence[:, 0]))
