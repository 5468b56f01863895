"""The model at the tiny preset: head shapes, gradients, padding invariance, attention paths,
the single-stream baseline, the declarative schedule, presets and save/load."""

from __future__ import annotations

import pytest
import torch

from vilbert.model import (
    HEAD_TYPES,
    ViLBertConfig,
    build_model,
    list_presets,
    load_pretrained,
    load_preset,
    save_pretrained,
)
from vilbert.model.layers import attend

ALL_HEADS = {
    "masked_word": {},
    "masked_region": {},
    "alignment": {},
    "vqa": {"num_answers": 7},
    "pair_score": {},
    "region_score": {},
    "contrastive": {},
}


def make_inputs(b=3, t=6, r=5, d=1280, seed=0):
    g = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(b, t, dtype=torch.long)
    image_mask = torch.ones(b, r, dtype=torch.long)
    if b > 1:
        attention_mask[1, t - 2 :] = 0
        image_mask[1, r - 2 :] = 0
    return {
        "input_ids": torch.randint(1, 1000, (b, t), generator=g),
        "token_type_ids": torch.zeros(b, t, dtype=torch.long),
        "attention_mask": attention_mask,
        "image_features": torch.randn(b, r, d, generator=g),
        "image_locations": torch.rand(b, r, 5, generator=g),
        "image_mask": image_mask,
    }


def tiny_model(architecture="two_stream", heads=ALL_HEADS):
    torch.manual_seed(0)
    return build_model(load_preset("tiny", architecture=architecture, heads=dict(heads))).eval()


@pytest.mark.parametrize("architecture", ["two_stream", "single_stream"])
def test_every_head_has_its_shape(architecture):
    model = tiny_model(architecture)
    c = model.config
    inputs = make_inputs()
    positions = torch.zeros(3, 6, dtype=torch.bool)
    positions[0, 1] = positions[2, 3] = positions[2, 4] = True
    out = model(**inputs, heads=tuple(ALL_HEADS), masked_word_positions=positions)
    dv = c.v_hidden_size if architecture == "two_stream" else c.hidden_size
    assert out.text_sequence.shape == (3, 6, c.hidden_size)
    assert out.image_sequence.shape == (3, 5, dv)
    assert out.pooled_text.shape == out.pooled_image.shape == out.fused.shape == (3, c.bi_hidden_size)
    torch.testing.assert_close(out.fused, out.pooled_text * out.pooled_image)
    shapes = {k: tuple(v.shape) for k, v in out.logits.items()}
    assert shapes == {
        "masked_word": (3, c.vocab_size),
        "masked_region": (3, 5, c.v_target_size),
        "alignment": (3, 2),
        "vqa": (3, 7),
        "pair_score": (3,),
        "region_score": (3, 5),
        "contrastive": (3, 3),  # every row's caption against every row's image
    }
    assert (out.logits["region_score"][1, 3:] == -10000.0).all()


def test_only_requested_heads_are_computed():
    model = tiny_model()
    calls = []
    for name, head in model.heads.items():
        head.register_forward_hook(lambda *_, name=name: calls.append(name))
    out = model(**make_inputs(), heads=("alignment",))
    assert list(out.logits) == ["alignment"] and calls == ["alignment"]
    with pytest.raises(KeyError, match="no head"):
        model(**make_inputs(), heads=("nonexistent",))


@pytest.mark.parametrize("architecture", ["two_stream", "single_stream"])
def test_every_parameter_receives_a_gradient(architecture):
    model = tiny_model(architecture).train()
    out = model(**make_inputs(), heads=tuple(ALL_HEADS))
    loss = sum(v.float().pow(2).mean() for v in out.logits.values())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


@pytest.mark.parametrize("architecture", ["two_stream", "single_stream"])
def test_padding_never_changes_real_positions(architecture):
    model = tiny_model(architecture)
    inputs = make_inputs(b=1, t=5, r=4)
    heads = ("alignment", "vqa", "pair_score", "masked_region")
    ref = model(**inputs, heads=heads)
    padded = {
        "input_ids": torch.cat([inputs["input_ids"], torch.randint(1, 1000, (1, 3))], 1),
        "token_type_ids": torch.cat([inputs["token_type_ids"], torch.ones(1, 3, dtype=torch.long)], 1),
        "attention_mask": torch.cat([inputs["attention_mask"], torch.zeros(1, 3, dtype=torch.long)], 1),
        "image_features": torch.cat([inputs["image_features"], 5 * torch.randn(1, 2, 1280)], 1),
        "image_locations": torch.cat([inputs["image_locations"], torch.rand(1, 2, 5)], 1),
        "image_mask": torch.cat([inputs["image_mask"], torch.zeros(1, 2, dtype=torch.long)], 1),
    }
    out = model(**padded, heads=heads)
    kw = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.text_sequence[:, :5], ref.text_sequence, **kw)
    torch.testing.assert_close(out.image_sequence[:, :4], ref.image_sequence, **kw)
    torch.testing.assert_close(out.fused, ref.fused, **kw)
    for name in ("alignment", "vqa", "pair_score"):
        torch.testing.assert_close(out.logits[name], ref.logits[name], **kw)
    torch.testing.assert_close(out.logits["masked_region"][:, :4], ref.logits["masked_region"], **kw)


def test_fused_attention_equals_the_explicit_formula():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g) for n in (5, 7, 7))
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 4:] = False
    fused, _ = attend(q, k, v, mask)
    explicit, probs = attend(q, k, v, mask, need_weights=True)
    scores = (q @ k.transpose(-1, -2)) / 8**0.5 + (~mask) * -1e9
    by_hand = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 24)
    torch.testing.assert_close(fused, by_hand, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(explicit, by_hand, atol=1e-6, rtol=1e-5)
    assert probs.shape == (2, 3, 5, 7) and (probs[1, ..., 4:] == 0).all()


@pytest.mark.parametrize("architecture", ["two_stream", "single_stream"])
def test_output_attentions_gives_co_attention_probabilities(architecture):
    model = tiny_model(architecture)
    inputs = make_inputs()
    out = model(**inputs, heads=("alignment",), output_attentions=True)
    plain = model(**inputs, heads=("alignment",))
    torch.testing.assert_close(out.logits["alignment"], plain.logits["alignment"], atol=1e-5, rtol=1e-5)
    n_layers = model.config.num_coattention_layers if architecture == "two_stream" else model.config.num_hidden_layers
    assert len(out.co_attentions) == n_layers
    t2i, i2t = out.co_attentions[0]
    assert t2i.shape[0] == 3 and t2i.shape[2:] == (6, 5) and i2t.shape[2:] == (5, 6)
    assert (t2i[1, :, :, 3:] == 0).all()  # padded regions get no attention
    if architecture == "two_stream":
        torch.testing.assert_close(t2i.sum(-1), torch.ones_like(t2i.sum(-1)))
    assert plain.co_attentions is None


def test_schedule_runs_layers_in_the_declared_order():
    config = load_preset("tiny", num_hidden_layers=4, coattention_before_text_layer=[2, 3])
    model = build_model(config).eval()
    order = []
    for name, module in model.encoder.named_children():
        for i, layer in enumerate(module):
            layer.register_forward_hook(lambda *_, tag=f"{name}.{i}": order.append(tag))
    model(**make_inputs())
    assert order == [
        "text_layers.0", "text_layers.1", "co_layers.0",
        "text_layers.2", "visual_layers.0", "co_layers.1",
        "text_layers.3", "visual_layers.1",
    ]


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="hidden_size 30 is not a multiple of num_attention_heads 4"):
        load_preset("tiny", hidden_size=30)
    with pytest.raises(ValueError, match="same length"):
        load_preset("tiny", coattention_before_text_layer=[1])
    with pytest.raises(ValueError, match="non-decreasing"):
        load_preset("tiny", coattention_before_visual_layer=[1, 0])
    with pytest.raises(KeyError, match="valid presets: base, demo, small, tiny"):
        load_preset("huge")
    with pytest.raises(ValueError, match="v_feature_size"):
        tiny_model()(**make_inputs(d=40))


def test_presets():
    assert set(list_presets()) >= {"base", "small", "tiny"}
    small = load_preset("small")
    assert (small.hidden_size, small.num_hidden_layers, small.num_attention_heads, small.intermediate_size) == (
        384, 6, 12, 1536,
    )
    assert (small.v_feature_size, small.v_target_size) == (1280, 1000)
    base = load_preset("base")
    assert base.coattention_before_text_layer == [6, 7, 8, 9, 10, 11] and base.v_num_hidden_layers == 6


def test_add_head_and_save_load_round_trip(tmp_path):
    model = tiny_model(heads={"alignment": {}})
    head = model.add_head("vqa", num_answers=5)
    assert model.config.heads["vqa"] == {"num_answers": 5} and "vqa" in dict(model.heads.named_children())
    with pytest.raises(ValueError, match="already has"):
        model.add_head("vqa")
    with torch.no_grad():
        head.fc2.bias.fill_(0.25)
    save_pretrained(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "README.md", "checksums.json", "config.json", "model.safetensors", "tokenizer_config.json", "vocab.txt"]
    loaded = load_pretrained(tmp_path / "m").eval()
    assert loaded.config == model.config
    inputs = make_inputs()
    a = model(**inputs, heads=("alignment", "vqa"))
    b = loaded(**inputs, heads=("alignment", "vqa"))
    for name in ("alignment", "vqa"):
        torch.testing.assert_close(a.logits[name], b.logits[name], atol=0, rtol=0)
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        load_pretrained(tmp_path)


def test_config_json_round_trip(tmp_path):
    config = load_preset("small")
    config.to_json(tmp_path / "c.json")
    assert ViLBertConfig.from_json(tmp_path / "c.json") == config
    with pytest.raises(ValueError, match="unknown ViLBertConfig keys"):
        ViLBertConfig.from_dict({"hiden_size": 3})
    assert set(HEAD_TYPES) == set(ALL_HEADS)


def test_reinitialize_resets_only_the_named_modules():
    model = tiny_model(heads={"alignment": {}})
    with torch.no_grad():  # as if pretrained: every weight moved away from its initialisation
        for p in model.parameters():
            p.add_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    reset = model.reinitialize(["text_pooler", "image_pooler"])
    assert sorted(reset) == sorted(f"{m}.dense.{p}" for m in ("text_pooler", "image_pooler") for p in ("weight", "bias"))
    after = model.state_dict()
    for key, value in after.items():
        if key in reset:
            assert not torch.equal(value, before[key]), key
        else:
            assert torch.equal(value, before[key]), key
    # BERT's initialisation: zero bias, N(0, 0.02) weight; the draw follows torch's seed
    assert torch.count_nonzero(after["text_pooler.dense.bias"]) == 0
    assert abs(float(after["image_pooler.dense.weight"].std()) - model.config.initializer_range) < 0.005
    again = tiny_model(heads={"alignment": {}})
    torch.manual_seed(3)
    again.reinitialize(["text_pooler", "image_pooler"])
    torch.testing.assert_close(again.state_dict()["text_pooler.dense.weight"], after["text_pooler.dense.weight"])
    with pytest.raises(KeyError, match="no such module.*text_pooler"):
        model.reinitialize(["text_poolr"])
