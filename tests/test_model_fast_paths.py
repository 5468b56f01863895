"""The model's fast paths compute what the plain formulas do: both attention paths (SDPA when no
dropout is applied, the explicit one under attention dropout in training), their gradients, and
the padding mask shortcut."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vilbert.model import build_model, load_preset
from vilbert.model.layers import attend, key_mask
from vilbert.model.layers import CoAttentionLayer, TransformerLayer

HEADS = {"masked_word": {}, "masked_region": {}, "alignment": {}, "vqa": {"num_answers": 7}}


def qkv(b=2, h=3, length=5, s=7, e=8, seed=1, grad=False):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, e, generator=g) for n in (length, s, s))
    return tuple(t.requires_grad_(grad) for t in (q, k, v))


def padded_mask(b=2, s=7):
    mask = torch.ones(b, 1, 1, s, dtype=torch.bool)
    mask[1, ..., 4:] = False
    return mask


def by_hand(q, k, v, mask, keep=None, p=0.0):
    """softmax(q k^T / sqrt(E) masked) -> (optional dropout mask) -> @ v, as [B,L,H*E]."""
    b, h, length, e = q.shape
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(e) + (~mask) * -1e9
    probs = scores.softmax(-1)
    if keep is not None:
        probs = probs * keep / (1 - p)
    return (probs @ v).transpose(1, 2).reshape(b, length, h * e)


def test_eval_path_uses_the_same_formula_as_the_explicit_path():
    q, k, v = qkv()
    mask = padded_mask()
    fused, none = attend(q, k, v, mask)
    explicit, probs = attend(q, k, v, mask, need_weights=True)
    torch.testing.assert_close(fused, explicit, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fused, by_hand(q, k, v, mask), atol=1e-6, rtol=1e-5)
    assert none is None and (probs[1, ..., 4:] == 0).all()


def test_both_paths_give_the_same_gradients():
    grads = []
    for need_weights in (False, True):
        q, k, v = qkv(grad=True)
        context, _ = attend(q, k, v, padded_mask(), need_weights=need_weights)
        (context * torch.linspace(-1, 1, context.shape[-1])).sum().backward()
        grads.append([t.grad for t in (q, k, v)])
    for fused, explicit in zip(*grads):
        torch.testing.assert_close(fused, explicit, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("need_weights", [False, True])
def test_dropout_path_equals_the_formula_with_the_same_dropout_mask(need_weights):
    q, k, v = qkv()
    mask, p = padded_mask(), 0.3
    torch.manual_seed(123)
    context, probs = attend(q, k, v, mask, dropout_p=p, need_weights=need_weights)
    torch.manual_seed(123)  # F.dropout draws keep = bernoulli(1 - p) over the probabilities
    keep = torch.empty(q.shape[0], q.shape[1], q.shape[2], k.shape[2]).bernoulli_(1 - p)
    assert 0 < keep.mean() < 1
    torch.testing.assert_close(context, by_hand(q, k, v, mask, keep, p), atol=1e-6, rtol=1e-5)
    if need_weights:  # the returned probabilities are the ones before dropout
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3, 5))
    else:
        assert probs is None


def test_attention_dropout_is_applied_in_training_only():
    torch.manual_seed(0)
    layer = TransformerLayer(16, 2, 32, "gelu", dropout=0.0, attn_dropout=0.5, eps=1e-12)
    x = torch.randn(2, 5, 16)
    layer.eval()
    assert torch.equal(layer(x, None)[0], layer(x, None)[0])
    layer.train()
    assert not torch.allclose(layer(x, None)[0], layer(x, None)[0])


def test_key_mask_is_none_only_when_nothing_is_padded():
    assert key_mask(torch.ones(3, 4, dtype=torch.long)) is None
    mask = key_mask(torch.tensor([[1, 1, 0], [1, 1, 1]]))
    assert mask.dtype == torch.bool and mask.shape == (2, 1, 1, 3)
    assert mask[0, 0, 0].tolist() == [True, True, False]


def set_dropout(model: nn.Module, attention: float) -> None:
    """Hidden dropout off; attention dropout `attention` everywhere (the layers read it per call)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(module, TransformerLayer):
            module.attn_dropout = attention
        if isinstance(module, CoAttentionLayer):
            module.text_attn_dropout = module.image_attn_dropout = attention


@pytest.mark.parametrize("architecture", ["two_stream", "single_stream"])
def test_training_attention_path_matches_eval_path_in_the_whole_model(architecture):
    # A vanishing attention dropout takes the explicit path in training while dropping nothing,
    # so training-mode outputs must equal the eval (SDPA) outputs, padding included.
    torch.manual_seed(0)
    model = build_model(load_preset("tiny", architecture=architecture, heads=dict(HEADS)))
    set_dropout(model, attention=1e-12)
    g = torch.Generator().manual_seed(0)
    inputs = {
        "input_ids": torch.randint(1, 1000, (3, 6), generator=g),
        "token_type_ids": torch.zeros(3, 6, dtype=torch.long),
        "attention_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 6]),
        "image_features": torch.randn(3, 5, model.config.v_feature_size, generator=g),
        "image_locations": torch.rand(3, 5, 5, generator=g),
        "image_mask": torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [1] * 5]),
    }
    heads = ("masked_region", "alignment", "vqa")
    outs = []
    for train in (True, False):
        model.train(train)
        outs.append(model(**inputs, heads=heads))
    trained, evaluated = outs
    kw = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(trained.text_sequence, evaluated.text_sequence, **kw)
    torch.testing.assert_close(trained.image_sequence, evaluated.image_sequence, **kw)
    for name in heads:
        torch.testing.assert_close(trained.logits[name], evaluated.logits[name], **kw)
    # With real attention dropout the training outputs do change.
    set_dropout(model, attention=0.5)
    model.train()
    dropped = model(**inputs, heads=heads)
    assert not torch.allclose(dropped.fused, evaluated.fused, **kw)
