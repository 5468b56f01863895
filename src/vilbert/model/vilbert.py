"""ViLBERT: a text stream (BERT) and a visual stream that exchange information through
co-attention layers, with poolers, fusion and named task heads.

Dimension letters: B batch, T text tokens, R regions (row 0 = [IMG]), D region feature width,
Dt text width, Dv visual width, Hb pooled/fused width (bi_hidden_size), V vocabulary,
C region classes, A answers, N masked words in the batch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from vilbert.model.config import ViLBertConfig
from vilbert.model.heads import ContrastiveHead, MaskedWordHead, build_head
from vilbert.model.hub import HubMixin
from vilbert.model.layers import CoAttentionLayer, ImageEmbeddings, Pooler, TextEmbeddings, TransformerLayer, key_mask
from vilbert.model.single_stream import SingleStreamEncoder

Tensor = torch.Tensor


@dataclass
class ViLBertOutput:
    text_sequence: Tensor  # [B,T,Dt]
    image_sequence: Tensor  # [B,R,Dv]
    pooled_text: Tensor  # [B,Hb]
    pooled_image: Tensor  # [B,Hb]
    fused: Tensor  # [B,Hb] pooled_text * pooled_image (before dropout)
    logits: dict[str, Tensor] = field(default_factory=dict)  # only the heads asked for
    # With output_attentions: per co-attention layer (text->image [B,H,T,R], image->text [B,H,R,T]).
    co_attentions: list[tuple[Tensor, Tensor]] | None = None


class TwoStreamEncoder(nn.Module):
    """Text layers, visual layers and co-attention layers run on the config's declarative schedule."""

    def __init__(self, config: ViLBertConfig):
        super().__init__()
        c = config
        self.text_layers = nn.ModuleList(
            TransformerLayer(
                c.hidden_size, c.num_attention_heads, c.intermediate_size, c.hidden_act,
                c.hidden_dropout_prob, c.attention_probs_dropout_prob, c.layer_norm_eps,
            )
            for _ in range(c.num_hidden_layers)
        )
        self.visual_layers = nn.ModuleList(
            TransformerLayer(
                c.v_hidden_size, c.v_num_attention_heads, c.v_intermediate_size, c.v_hidden_act,
                c.v_hidden_dropout_prob, c.v_attention_probs_dropout_prob, c.layer_norm_eps,
            )
            for _ in range(c.v_num_hidden_layers)
        )
        self.co_layers = nn.ModuleList(
            CoAttentionLayer(
                c.hidden_size, c.v_hidden_size, c.bi_hidden_size, c.bi_num_attention_heads,
                c.intermediate_size, c.v_intermediate_size, c.hidden_act, c.v_hidden_act,
                c.hidden_dropout_prob, c.v_hidden_dropout_prob,
                c.attention_probs_dropout_prob, c.v_attention_probs_dropout_prob, c.layer_norm_eps,
            )
            for _ in range(c.num_coattention_layers)
        )
        # Segment k: text layers [t_{k-1}, t_k) and visual layers [v_{k-1}, v_k), then co-layer k.
        t_ends = list(c.coattention_before_text_layer) + [c.num_hidden_layers]
        v_ends = list(c.coattention_before_visual_layer) + [c.v_num_hidden_layers]
        self.segments = [
            (range(t0, t1), range(v0, v1))
            for t0, t1, v0, v1 in zip([0] + t_ends[:-1], t_ends, [0] + v_ends[:-1], v_ends)
        ]

    def forward(
        self, text: Tensor, text_mask: Tensor, image: Tensor, image_mask: Tensor, need_weights: bool = False
    ) -> tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]] | None]:
        """text [B,T,Dt], image [B,R,Dv], masks bool [B,T]/[B,R] -> sequences (+ co-attention probs)."""
        t_mask, v_mask = key_mask(text_mask), key_mask(image_mask)
        probs: list[tuple[Tensor, Tensor]] | None = [] if need_weights else None
        for k, (t_range, v_range) in enumerate(self.segments):
            for i in t_range:
                text, _ = self.text_layers[i](text, t_mask)
            for i in v_range:
                image, _ = self.visual_layers[i](image, v_mask)
            if k < len(self.co_layers):
                text, image, t2i, i2t = self.co_layers[k](text, t_mask, image, v_mask, need_weights)
                if probs is not None:
                    probs.append((t2i, i2t))
        return text, image, probs

    def text_only(self, text: Tensor, text_mask: Tensor) -> Tensor:
        """The text stream alone: every text layer in order, no co-attention (the dual-encoder view)."""
        mask = key_mask(text_mask)
        for layer in self.text_layers:
            text, _ = layer(text, mask)
        return text  # [B,T,Dt]

    def image_only(self, image: Tensor, image_mask: Tensor) -> Tensor:
        """The visual stream alone: every visual layer in order, no co-attention."""
        mask = key_mask(image_mask)
        for layer in self.visual_layers:
            image, _ = layer(image, mask)
        return image  # [B,R,Dv]


class ViLBert(HubMixin, nn.Module):
    """Embeddings, encoder (two-stream or single-stream), poolers and an `nn.ModuleDict` of heads."""

    def __init__(self, config: ViLBertConfig):
        super().__init__()
        config.validate()
        self.config = config
        c = config
        two = c.architecture == "two_stream"
        self.image_width = c.v_hidden_size if two else c.hidden_size
        self.text_embeddings = TextEmbeddings(
            c.vocab_size, c.hidden_size, c.max_position_embeddings, c.type_vocab_size,
            c.hidden_dropout_prob, c.layer_norm_eps,
        )
        self.image_embeddings = ImageEmbeddings(
            c.v_feature_size, self.image_width, c.v_hidden_dropout_prob if two else c.hidden_dropout_prob,
            c.layer_norm_eps,
        )
        # 12-in-1's task tokens (config.task_tokens): row k is task k's token, inserted after [CLS].
        self.task_embeddings = nn.Embedding(len(c.task_tokens), c.hidden_size) if c.task_tokens else None
        self._task: str | None = None  # the task whose token the forward inserts (task_scope)
        self.encoder = TwoStreamEncoder(c) if two else SingleStreamEncoder(c)
        self.text_pooler = Pooler(c.hidden_size, c.bi_hidden_size)
        self.image_pooler = Pooler(self.image_width, c.bi_hidden_size)
        self.fused_dropout = nn.Dropout(c.hidden_dropout_prob)
        self.heads = nn.ModuleDict(
            {name: build_head(name, kwargs, c, self.image_width) for name, kwargs in c.heads.items()}
        )
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm.
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def reinitialize(self, module_names: Sequence[str]) -> list[str]:
        """Give the named submodules (e.g. "text_pooler", "encoder.text_layers.5") fresh weights
        from the model's own initialisation (its Linear, Embedding and LayerNorm layers), drawn
        from torch's global generator; returns the names of the parameters reset. A name that is no
        submodule raises, listing the top-level ones."""
        modules = dict(self.named_modules())
        reset: list[str] = []
        for name in module_names:
            if not name or name not in modules:
                raise KeyError(f"cannot re-initialise {name!r}: the model has no such module "
                               f"(top-level modules: {', '.join(n for n, _ in self.named_children())})")
            modules[name].apply(self._init_weights)
            for sub_name, sub in modules[name].named_modules(prefix=name):
                if isinstance(sub, (nn.Linear, nn.Embedding, nn.LayerNorm)):
                    reset += [f"{sub_name}.{p}" for p, _ in sub.named_parameters(recurse=False)]
        return reset

    # -- task tokens (12-in-1) ---------------------------------------------------------------------

    @contextlib.contextmanager
    def task_scope(self, task: str) -> Iterator[None]:
        """Forwards inside insert `task`'s token after [CLS] (a no-op for a model without task
        tokens); a task the model has no token for is a KeyError naming the ones it has."""
        if self.task_embeddings is None:
            yield
            return
        if task not in self.config.task_tokens:
            raise KeyError(f"the model has no task token for {task!r}; its task tokens: "
                           f"{', '.join(self.config.task_tokens)} (add one with model.add_task_tokens)")
        before, self._task = self._task, task
        try:
            yield
        finally:
            self._task = before

    def add_task_tokens(self, tasks: Sequence[str]) -> list[str]:
        """Give each named task without one a fresh token (the model's initialisation), keeping the
        existing rows; records them in the config and returns the names added."""
        new = [t for t in dict.fromkeys(tasks) if t not in self.config.task_tokens]
        if not new:
            return []
        old = self.task_embeddings
        ref = next(self.parameters())
        table = nn.Embedding(len(self.config.task_tokens) + len(new), self.config.hidden_size).to(ref.device, ref.dtype)
        self._init_weights(table)
        if old is not None:
            with torch.no_grad():
                table.weight[: old.num_embeddings] = old.weight
        self.task_embeddings = table
        self.config.task_tokens = [*self.config.task_tokens, *new]
        return new

    def _task_rows(self, batch: int, task_ids: Tensor | None, device: torch.device) -> Tensor:
        if task_ids is not None:
            return task_ids.reshape(batch).to(device=device, dtype=torch.long)  # [B]
        if self._task is None:
            raise ValueError(f"this model has task tokens ({', '.join(self.config.task_tokens)}): run it inside "
                             "model.task_scope(name) or pass task_ids")
        return torch.full((batch,), self.config.task_tokens.index(self._task), device=device, dtype=torch.long)

    def text_inputs(self, input_ids: Tensor, token_type_ids: Tensor, attention_mask: Tensor,
                    task_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The text stream's input [B,T',Dt] and its bool mask [B,T']: the embeddings (T' = T), or with
        task tokens the task's token after [CLS] (T' = T + 1). As in the original, the token gets no
        position or segment embedding and the words keep their positions; the LayerNorm and dropout
        apply to it as to every token (row-wise, so applying them apart is the same)."""
        text = self.text_embeddings(input_ids, token_type_ids)  # [B,T,Dt]
        mask = attention_mask.bool()
        if self.task_embeddings is None:
            return text, mask
        rows = self._task_rows(text.shape[0], task_ids, text.device)
        emb = self.text_embeddings
        token = emb.dropout(emb.norm(self.task_embeddings(rows)))[:, None]  # [B,1,Dt]
        return torch.cat([text[:, :1], token, text[:, 1:]], dim=1), self.extend_text_mask(mask)  # [B,T+1,Dt]

    def extend_text_mask(self, mask: Tensor) -> Tensor:
        """A [B,T] text mask as the stream sees it: with task tokens, a real position after [CLS]."""
        mask = mask.bool()
        if self.task_embeddings is None:
            return mask
        return torch.cat([mask[:, :1], torch.ones_like(mask[:, :1]), mask[:, 1:]], dim=1)  # [B,T+1]

    def _drop_task_token(self, text: Tensor, co_attn: list[tuple[Tensor, Tensor]] | None
                         ) -> tuple[Tensor, list[tuple[Tensor, Tensor]] | None]:
        """Outputs indexed by the caller's tokens again: the task token's row (and attention) removed."""
        if self.task_embeddings is None:
            return text, co_attn
        keep = [0, *range(2, text.shape[1])]
        text = text[:, keep]  # [B,T+1,Dt] -> [B,T,Dt]
        if co_attn is not None:
            co_attn = [(t2i[:, :, keep], i2t[..., keep]) for t2i, i2t in co_attn]  # T+1 -> T
        return text, co_attn

    def add_head(self, name: str, **kwargs: Any) -> nn.Module:
        """Add a head (e.g. fine-tuning a checkpoint that lacks it) and record it in the config."""
        if name in self.heads:
            raise ValueError(f"model already has a head named {name!r}")
        ref = next(self.parameters())
        head = build_head(name, kwargs, self.config, self.image_width).to(ref.device, ref.dtype)
        head.apply(self._init_weights)
        self.heads[name] = head
        self.config.heads[name] = dict(kwargs)
        return head

    def _check_inputs(self, input_ids: Tensor, image_features: Tensor, image_locations: Tensor) -> None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B,T], got shape {tuple(input_ids.shape)}")
        if image_features.dim() != 3 or image_features.shape[-1] != self.config.v_feature_size:
            raise ValueError(
                f"image_features must be [B,R,{self.config.v_feature_size}] (v_feature_size), "
                f"got shape {tuple(image_features.shape)}"
            )
        if image_locations.shape != (*image_features.shape[:2], 5):
            raise ValueError(f"image_locations must be [B,R,5], got shape {tuple(image_locations.shape)}")
        if image_features.shape[0] != input_ids.shape[0]:
            raise ValueError(f"batch sizes differ: text {input_ids.shape[0]}, images {image_features.shape[0]}")

    def contrastive_head(self, head: str = "contrastive") -> ContrastiveHead:
        """The named contrastive head (the first stage); a model without one is a KeyError saying so."""
        if head not in self.heads or not isinstance(self.heads[head], ContrastiveHead):
            raise KeyError(f"model has no contrastive head {head!r} (the first stage needs one: pretrain or "
                           f"fine-tune with contrastive_weight > 0); its heads: {', '.join(self.heads) or '(none)'}")
        return self.heads[head]

    def embed_text(self, input_ids: Tensor, token_type_ids: Tensor, attention_mask: Tensor,
                   head: str = "contrastive") -> Tensor:
        """Captions [B,T] -> unit embeddings [B,E] from the text stream alone (no image)."""
        projection = self.contrastive_head(head)
        text, mask = self.text_inputs(input_ids, token_type_ids, attention_mask)
        text = self.encoder.text_only(text, mask)
        return projection.embed_text(text, mask)

    def embed_images(self, image_features: Tensor, image_locations: Tensor, image_mask: Tensor,
                     head: str = "contrastive") -> Tensor:
        """Images [B,R,D] -> unit embeddings [B,E] from the visual stream alone (no text)."""
        projection = self.contrastive_head(head)
        mask = image_mask.bool()
        image = self.encoder.image_only(self.image_embeddings(image_features, image_locations), mask)
        return projection.embed_image(image, mask)

    def forward(
        self,
        input_ids: Tensor,
        token_type_ids: Tensor,
        attention_mask: Tensor,
        image_features: Tensor,
        image_locations: Tensor,
        image_mask: Tensor,
        heads: Sequence[str] = (),
        masked_word_positions: Tensor | None = None,
        output_attentions: bool = False,
        dual_inputs: Mapping[str, Tensor] | None = None,
        task_ids: Tensor | None = None,
    ) -> ViLBertOutput:
        """Encode a batch and compute only the heads named in `heads`.

        `masked_word_positions` (bool [B,T]) restricts masked_word logits to those positions
        ([N,V]); without it they cover every position ([B,T,V]). A contrastive head's logits are
        the scaled similarities [Bd,Bd] of every row's caption with every row's image, each
        embedded by its stream alone, from `dual_inputs` (the six model inputs, e.g. pretraining's
        unmasked captions and regions) or else from the batch itself; computing them in the same
        forward keeps one forward per step, as DDP expects. A model with task tokens inserts the
        token of `task_ids` ([B] rows of its table) or else of `task_scope`'s task; every output
        is indexed by the input's tokens (the task token's row is left out).
        """
        if isinstance(heads, str):
            heads = (heads,)
        missing = [h for h in heads if h not in self.heads]
        if missing:
            raise KeyError(f"model has no head {missing}; its heads: {', '.join(self.heads) or '(none)'}")
        self._check_inputs(input_ids, image_features, image_locations)
        text, text_mask = self.text_inputs(input_ids, token_type_ids, attention_mask, task_ids)
        image_mask = image_mask.bool()
        image = self.image_embeddings(image_features, image_locations)
        text, image, co_attn = self.encoder(text, text_mask, image, image_mask, output_attentions)
        text, co_attn = self._drop_task_token(text, co_attn)  # [CLS] stays row 0: the pooler reads it
        pooled_text, pooled_image = self.text_pooler(text), self.image_pooler(image)
        fused = pooled_text * pooled_image
        out = ViLBertOutput(text, image, pooled_text, pooled_image, fused, co_attentions=co_attn)
        fused_in = self.fused_dropout(fused) if any(self.heads[h].source == "fused" for h in heads) else None
        for name in heads:
            head = self.heads[name]
            if isinstance(head, ContrastiveHead):
                d = dual_inputs if dual_inputs is not None else {
                    "input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
                    "image_features": image_features, "image_locations": image_locations, "image_mask": image_mask}
                text_emb = self.embed_text(d["input_ids"], d["token_type_ids"], d["attention_mask"], name)
                image_emb = self.embed_images(d["image_features"], d["image_locations"], d["image_mask"], name)
                out.logits[name] = head(text_emb, image_emb)  # [Bd,Bd]
            elif isinstance(head, MaskedWordHead):
                rows = text if masked_word_positions is None else text[masked_word_positions.bool()]  # [N,Dt]
                out.logits[name] = head(rows, self.text_embeddings.word.weight)
            elif head.source == "fused":
                out.logits[name] = head(fused_in)
            elif head.source == "image":
                logits = head(image)
                if logits.dim() == 2:  # per-region scores: padded regions can never win
                    logits = logits.masked_fill(~image_mask, -10000.0)
                out.logits[name] = logits
            else:
                out.logits[name] = head(text)
        return out


def build_model(config: ViLBertConfig) -> ViLBert:
    """A freshly initialised model for `config` (two-stream ViLBERT or the single-stream baseline)."""
    return ViLBert(config)
