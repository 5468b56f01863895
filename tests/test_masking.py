"""Pretraining corruption: proportions, determinism, what is never masked, the zero-mask guard."""

import pytest
import torch

from vilbert.data.masking import mask_regions, mask_words, region_kl_loss

SPECIAL = (0, 100, 101, 102, 103)
VOCAB = 30522


def _text_batch(rows=400, length=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, VOCAB, (rows, length), generator=g)
    lengths = torch.randint(5, length + 1, (rows,), generator=g)
    attention = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids[:, 0] = 101
    ids[torch.arange(rows), lengths - 1] = 102
    ids = ids.masked_fill(attention == 0, 0)
    return ids, attention


def test_word_masking_proportions():
    ids, attention = _text_batch()
    masked, labels = mask_words(ids, attention, VOCAB, SPECIAL, 103, generator=torch.Generator().manual_seed(1))
    candidates = attention.bool() & ~torch.isin(ids, torch.tensor(SPECIAL))
    chosen = labels != -1
    n_cand, n = int(candidates.sum()), int(chosen.sum())
    assert abs(n / n_cand - 0.15) < 0.01, n / n_cand  # ~10k candidates: sd ~0.0036
    assert torch.equal(labels[chosen], ids[chosen])
    as_mask = (masked[chosen] == 103).float().mean().item()
    unchanged = (masked[chosen] == ids[chosen]).float().mean().item()
    random = 1 - as_mask - unchanged
    assert abs(as_mask - 0.8) < 0.03 and abs(unchanged - 0.1) < 0.025 and abs(random - 0.1) < 0.025
    # Outside the chosen positions nothing changes; random replacements are never special ids.
    assert torch.equal(masked[~chosen], ids[~chosen])
    assert not torch.isin(masked[chosen & (masked != 103)], torch.tensor((0, 100, 101, 102))).any()


def test_specials_and_padding_never_masked():
    ids, attention = _text_batch(rows=200)
    _, labels = mask_words(ids, attention, VOCAB, SPECIAL, 103, prob=1.0, generator=torch.Generator().manual_seed(0))
    assert (labels[torch.isin(ids, torch.tensor(SPECIAL))] == -1).all()
    assert (labels[attention == 0] == -1).all()
    # with prob 1 every real non-special token is chosen
    assert ((labels != -1) == (attention.bool() & ~torch.isin(ids, torch.tensor(SPECIAL)))).all()


def test_masking_is_deterministic_per_seed_and_respects_rows():
    ids, attention = _text_batch(rows=50)
    a = mask_words(ids, attention, VOCAB, SPECIAL, 103, generator=torch.Generator().manual_seed(7))
    b = mask_words(ids, attention, VOCAB, SPECIAL, 103, generator=torch.Generator().manual_seed(7))
    c = mask_words(ids, attention, VOCAB, SPECIAL, 103, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])
    rows = torch.arange(50) % 2 == 0
    masked, labels = mask_words(ids, attention, VOCAB, SPECIAL, 103, prob=0.5, generator=torch.Generator(), rows=rows)
    assert (labels[~rows] == -1).all() and torch.equal(masked[~rows], ids[~rows]) and (labels[rows] != -1).any()


def test_region_masking_proportions_and_img_row():
    g = torch.Generator().manual_seed(0)
    feats = torch.rand(500, 37, 8, generator=g) + 0.1  # never zero before masking
    counts = torch.randint(11, 38, (500,), generator=g)
    mask = (torch.arange(37)[None] < counts[:, None]).long()
    masked, chosen = mask_regions(feats, mask, generator=torch.Generator().manual_seed(3))
    assert not chosen[:, 0].any() and torch.equal(masked[:, 0], feats[:, 0])
    assert not chosen[mask == 0].any()
    rate = chosen.sum().item() / (mask[:, 1:].sum().item())
    assert abs(rate - 0.15) < 0.01, rate
    zeroed = (masked[chosen] == 0).all(-1).float().mean().item()
    assert abs(zeroed - 0.9) < 0.02, zeroed
    assert torch.equal(masked[~chosen], feats[~chosen])
    again = mask_regions(feats, mask, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again[0], masked) and torch.equal(again[1], chosen)


def test_region_kl_loss_values_and_zero_guard():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, generator=g, requires_grad=True)
    target = torch.softmax(torch.randn(2, 4, 5, generator=g), -1)
    target[0, 1] = torch.tensor([1.0, 0, 0, 0, 0])  # zeros in the target must not give NaN
    masked = torch.tensor([[False, True, True, False], [False, False, False, True]])
    loss = region_kl_loss(logits, target, masked)
    q = torch.log_softmax(logits, -1)
    expected = torch.stack([
        (target[b, r] * (target[b, r].clamp_min(1e-30).log() - q[b, r])).sum() for b, r in [(0, 1), (0, 2), (1, 3)]
    ]).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    none = region_kl_loss(logits, target, torch.zeros(2, 4, dtype=torch.bool))
    assert torch.isfinite(none) and none.item() == 0.0
    none.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="differ"):
        region_kl_loss(logits, target[:, :3], masked)

