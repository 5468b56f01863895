"""Task tokens (12-in-1): the original's outputs with task-specific tokens, the checkpoint key
converted, outputs indexed by the caller's tokens, off by default, and every path that embeds
text (plain forward, cached retrieval scoring, the dual encoder) inserting the same token."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_model import make_inputs as inputs  # random token ids and regions, row 1 padded

from vilbert.model import build_model, load_preset, load_pretrained, save_pretrained
from vilbert.model.convert import (
    ORIGINAL_TASK_TOKENS,
    TASK_TOKENS_KEY,
    config_from_original,
    convert_original_checkpoint,
    load_original_checkpoint,
)
from vilbert.model.pair_cache import ImageInputs, TextInputs, score_matrix

FIXTURE = Path(__file__).parent / "fixtures" / "task_tokens" / "outputs.pt"
TOL = dict(atol=1e-5, rtol=1e-5)
TASKS = ["vqa", "vcr", "refer"]


def token_model(tasks=TASKS, **overrides):
    torch.manual_seed(0)
    heads = {"vqa": {"num_answers": 5}, "pair_score": {}, "region_score": {}, "masked_word": {}, "contrastive": {}}
    model = build_model(load_preset("tiny", heads=heads, task_tokens=list(tasks), **overrides)).eval()
    with torch.no_grad():  # weights far from the near-zero init, so a wrong token or path shows
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model


def converted_with_tokens(reference_dir, table):
    state = load_original_checkpoint(reference_dir / "vl_tasks_model.bin")
    state[TASK_TOKENS_KEY] = table
    config, new_state, report = convert_original_checkpoint(state, config_from_original(reference_dir / "config.json"))
    model = build_model(config)
    model.load_state_dict(new_state, strict=True)
    return model.eval(), report


def reference_inputs(reference_dir):
    inp = torch.load(reference_dir / "inputs.pt", weights_only=True)
    kwargs = {"input_ids": inp["input_ids"], "token_type_ids": inp["token_type_ids"],
              "attention_mask": inp["attention_mask"], "image_features": inp["image_feat"],
              "image_locations": inp["image_loc"], "image_mask": inp["image_attention_mask"]}
    return kwargs, inp["attention_mask"].bool(), inp["image_attention_mask"].bool()


def test_the_original_task_token_checkpoint_converts_and_matches_its_outputs(reference_dir, tmp_path):
    ref = torch.load(FIXTURE, weights_only=True)
    model, report = converted_with_tokens(reference_dir, ref["task_embeddings"])
    assert model.config.task_tokens == ORIGINAL_TASK_TOKENS[: ref["task_embeddings"].shape[0]]
    assert "task_embeddings.weight" in report.loaded
    torch.testing.assert_close(model.task_embeddings.weight, ref["task_embeddings"])
    kwargs, tm, im = reference_inputs(reference_dir)
    with torch.no_grad():
        out = model(**kwargs, heads=("vqa", "pair_score", "region_score"), task_ids=ref["task_ids"])
    torch.testing.assert_close(out.logits["vqa"], ref["vil_prediction"], **TOL)
    torch.testing.assert_close(out.logits["pair_score"], ref["vil_logit"][:, 0], **TOL)
    torch.testing.assert_close(out.logits["region_score"][im], ref["vision_logit"][..., 0][im], **TOL)
    torch.testing.assert_close(out.pooled_text, ref["pooled_output_t"], **TOL)
    torch.testing.assert_close(out.image_sequence[im], ref["sequence_output_v"][im], **TOL)
    # the original keeps the token's row ([CLS], task, words); ours is indexed by the input's tokens
    words = [0, *range(2, ref["sequence_output_t"].shape[1])]
    torch.testing.assert_close(out.text_sequence[tm], ref["sequence_output_t"][:, words][tm], **TOL)
    # by name: the fixture's rows 1, 10 and 8 are VQA, RefCOCO+ and Flickr30k retrieval, our vqa, refer, retrieval
    names = [model.config.task_tokens[i] for i in ref["task_ids"].tolist()]
    assert names == ["vqa", "refer", "retrieval"]
    save_pretrained(model, tmp_path / "mt")
    loaded = load_pretrained(tmp_path / "mt").eval()
    for row, name in enumerate(names):
        with torch.no_grad(), loaded.task_scope(name):
            one = loaded(**{k: v[row : row + 1] for k, v in kwargs.items()}, heads=("vqa",))
        torch.testing.assert_close(one.logits["vqa"][0], ref["vil_prediction"][row], **TOL)


def test_a_table_of_another_size_gets_a_name_per_row(reference_dir):
    model, _ = converted_with_tokens(reference_dir, torch.randn(22, 32))
    assert len(model.config.task_tokens) == 22 and model.config.task_tokens[-1] == "task21"
    with pytest.raises(ValueError, match="wrong shape"):  # a table of the wrong width is named
        converted_with_tokens(reference_dir, torch.randn(20, 31))


def test_off_by_default_and_the_paper_model_is_unchanged():
    torch.manual_seed(0)
    plain = build_model(load_preset("tiny")).eval()
    assert plain.config.task_tokens == [] and plain.task_embeddings is None
    assert not any("task" in k for k in plain.state_dict())
    with plain.task_scope("vqa"):  # a no-op without task tokens
        out = plain(**inputs(), heads=("alignment",))
    torch.testing.assert_close(out.logits["alignment"], plain(**inputs(), heads=("alignment",)).logits["alignment"])


def test_outputs_are_indexed_by_the_input_tokens_and_the_token_matters():
    model = token_model()
    x = inputs()
    positions = torch.zeros(3, 6, dtype=torch.bool)
    positions[0, 1] = positions[2, 4] = True
    with torch.no_grad(), model.task_scope("vqa"):
        out = model(**x, heads=("vqa", "masked_word"), masked_word_positions=positions, output_attentions=True)
    assert out.text_sequence.shape == (3, 6, model.config.hidden_size)
    t2i, i2t = out.co_attentions[0]
    assert t2i.shape[2] == 6 and i2t.shape[3] == 6
    torch.testing.assert_close(out.logits["masked_word"], model.heads["masked_word"](
        out.text_sequence[positions], model.text_embeddings.word.weight))
    with torch.no_grad(), model.task_scope("refer"):
        other = model(**x, heads=("vqa",))
    assert (other.logits["vqa"] - out.logits["vqa"]).abs().max() > 1e-3  # another task's token, another answer
    with torch.no_grad():  # task_ids name rows directly: row 0 is "vqa"
        by_id = model(**x, heads=("vqa",), task_ids=torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(by_id.logits["vqa"], out.logits["vqa"])


def test_a_task_token_model_names_what_it_needs():
    model = token_model()
    with pytest.raises(ValueError, match="task_scope"):
        model(**inputs(), heads=("vqa",))
    with pytest.raises(KeyError, match="no task token for 'retrieval'.*vqa, vcr, refer"):
        with model.task_scope("retrieval"):
            pass


def test_padding_never_changes_real_positions_with_a_task_token():
    model = token_model()
    x = inputs(b=1, t=5, r=4)
    padded = dict(x, input_ids=torch.cat([x["input_ids"], torch.randint(1, 1000, (1, 3))], 1),
                  token_type_ids=torch.cat([x["token_type_ids"], torch.ones(1, 3, dtype=torch.long)], 1),
                  attention_mask=torch.cat([x["attention_mask"], torch.zeros(1, 3, dtype=torch.long)], 1))
    with torch.no_grad(), model.task_scope("vcr"):
        a, b = model(**x, heads=("pair_score",)), model(**padded, heads=("pair_score",))
    torch.testing.assert_close(b.text_sequence[:, :5], a.text_sequence, **TOL)
    torch.testing.assert_close(b.logits["pair_score"], a.logits["pair_score"], **TOL)


def test_cached_retrieval_scoring_and_the_dual_encoder_use_the_token():
    model = token_model()
    x = inputs(b=4, t=6, r=5, seed=3)
    text = TextInputs(x["input_ids"], x["token_type_ids"], x["attention_mask"])
    images = ImageInputs(x["image_features"], x["image_locations"], x["image_mask"])
    with model.task_scope("vcr"):
        cached = score_matrix(model, text, images, cached=True)
        plain = score_matrix(model, text, images, cached=False)
        emb = model.embed_text(x["input_ids"], x["token_type_ids"], x["attention_mask"])
    torch.testing.assert_close(cached, plain, **TOL)
    with model.task_scope("vqa"):
        assert (score_matrix(model, text, images, cached=True) - cached).abs().max() > 1e-4
        assert (model.embed_text(x["input_ids"], x["token_type_ids"], x["attention_mask"]) - emb).abs().max() > 1e-4


def test_add_task_tokens_keeps_the_rows_it_has(tmp_path):
    model = token_model(tasks=["vqa"])
    before = model.task_embeddings.weight.detach().clone()
    assert model.add_task_tokens(["vqa", "refer", "refer"]) == ["refer"]
    assert model.config.task_tokens == ["vqa", "refer"]
    torch.testing.assert_close(model.task_embeddings.weight[:1], before)
    plain = build_model(load_preset("tiny"))
    assert plain.add_task_tokens(["vcr"]) == ["vcr"] and plain.task_embeddings.num_embeddings == 1
    save_pretrained(model, tmp_path / "m")  # the config names the rows; the weights load strictly
    assert load_pretrained(tmp_path / "m").config.task_tokens == ["vqa", "refer"]
    with pytest.raises(ValueError, match="named twice"):
        load_preset("tiny", task_tokens=["vqa", "vqa"])
