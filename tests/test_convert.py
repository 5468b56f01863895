"""Original checkpoints -> our model: parity with the original code's outputs on the fixture,
both release layouts, the `module.` prefix, the original config, and damaged checkpoints."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from vilbert.cli.convert import main as convert_main
from vilbert.model import load_pretrained
from vilbert.model.convert import (
    ConversionError,
    config_from_original,
    convert_original_checkpoint,
    load_original_checkpoint,
)
from vilbert.model.vilbert import build_model
from vilbert.tasks.vqa import head_answers

TOL = dict(atol=1e-5, rtol=1e-5)


def fixture_inputs(reference_dir):
    inp = torch.load(reference_dir / "inputs.pt", weights_only=True)
    kwargs = {
        "input_ids": inp["input_ids"],
        "token_type_ids": inp["token_type_ids"],
        "attention_mask": inp["attention_mask"],
        "image_features": inp["image_feat"],
        "image_locations": inp["image_loc"],
        "image_mask": inp["image_attention_mask"],
    }
    return kwargs, inp["attention_mask"].bool(), inp["image_attention_mask"].bool()


def converted(reference_dir, name, transform=lambda s: s):
    state = transform(load_original_checkpoint(reference_dir / name))
    config = config_from_original(reference_dir / "config.json")
    config, new_state, report = convert_original_checkpoint(state, config, what=name)
    model = build_model(config)
    model.load_state_dict(new_state, strict=True)
    return model.eval(), report


def run(model, kwargs):
    with torch.no_grad():
        return model(**kwargs, heads=tuple(model.heads))


def test_original_config_gives_the_schedule(reference_dir):
    config = config_from_original(reference_dir / "config.json")
    assert config.coattention_before_text_layer == [2, 3]
    assert config.coattention_before_visual_layer == [0, 1]
    assert (config.hidden_size, config.v_hidden_size, config.bi_hidden_size) == (32, 24, 32)
    bad = json.loads((reference_dir / "config.json").read_text()) | {"fusion_method": "sum"}
    with pytest.raises(ConversionError, match="fusion_method"):
        config_from_original(bad)


def test_pretraining_checkpoint_matches_the_original(reference_dir):
    model, report = converted(reference_dir, "pretrain_model.bin")
    kwargs, tm, im = fixture_inputs(reference_dir)
    ref = torch.load(reference_dir / "pretrain_outputs.pt", weights_only=True)
    out = run(model, kwargs)
    torch.testing.assert_close(out.text_sequence[tm], ref["sequence_output_t"][tm], **TOL)
    torch.testing.assert_close(out.image_sequence[im], ref["sequence_output_v"][im], **TOL)
    torch.testing.assert_close(out.pooled_text, ref["pooled_output_t"], **TOL)
    torch.testing.assert_close(out.pooled_image, ref["pooled_output_v"], **TOL)
    torch.testing.assert_close(out.logits["masked_word"][tm], ref["prediction_scores_t"][tm], **TOL)
    torch.testing.assert_close(out.logits["masked_region"][im], ref["prediction_scores_v"][im], **TOL)
    torch.testing.assert_close(out.logits["alignment"], ref["seq_relationship_score"], **TOL)
    # masked-word logits at chosen positions only are the same rows
    rows = run_positions(model, kwargs, tm)
    torch.testing.assert_close(rows, ref["prediction_scores_t"][tm], **TOL)
    assert sum("q_dense" in k for k in report.ignored) == 8


def run_positions(model, kwargs, positions):
    with torch.no_grad():
        return model(**kwargs, heads=("masked_word",), masked_word_positions=positions).logits["masked_word"]


def check_vl_tasks(out, ref, tm, im, vqa=True):
    if vqa:
        torch.testing.assert_close(out.logits["vqa"], ref["vil_prediction"], **TOL)
    torch.testing.assert_close(out.logits["pair_score"], ref["vil_logit"][:, 0], **TOL)
    torch.testing.assert_close(out.logits["region_score"][im], ref["vision_logit"][..., 0][im], **TOL)
    torch.testing.assert_close(out.logits["masked_region"][im], ref["vision_prediction"][im], **TOL)
    torch.testing.assert_close(out.logits["masked_word"][tm], ref["linguisic_prediction"][tm], **TOL)
    # batch of 3 is odd, so the original returned the alignment scores as vil_binary_prediction
    torch.testing.assert_close(out.logits["alignment"], ref["vil_binary_prediction"], **TOL)


def test_vl_tasks_checkpoint_matches_the_original(reference_dir):
    model, report = converted(reference_dir, "vl_tasks_model.bin")
    assert model.config.heads["vqa"] == {"num_answers": 3129, "hidden": 64}
    kwargs, tm, im = fixture_inputs(reference_dir)
    ref = torch.load(reference_dir / "vl_tasks_outputs.pt", weights_only=True)
    check_vl_tasks(run(model, kwargs), ref, tm, im)
    assert any(k.startswith("vil_prediction_gqa.") for k in report.ignored)


def test_module_prefix_is_accepted(reference_dir):
    model, _ = converted(reference_dir, "vl_tasks_model.bin", lambda s: {f"module.{k}": v for k, v in s.items()})
    kwargs, tm, im = fixture_inputs(reference_dir)
    ref = torch.load(reference_dir / "vl_tasks_outputs.pt", weights_only=True)
    check_vl_tasks(run(model, kwargs), ref, tm, im)


def to_beta_layout(state):
    """The multi-task checkpoint rewritten as vilbert_beta saves it: a weight-normalised
    vil_prediction.main.{0,3} (dim=None: scalar weight_g), no GQA/NLVR2/SNLI-VE heads."""
    out = {k: v for k, v in state.items() if not k.startswith(("vil_prediction", "vil_binary", "vil_tri"))}
    for theirs, ours in (("logit_fc.0", "main.0"), ("logit_fc.3", "main.3")):
        w = state[f"vil_prediction.{theirs}.weight"]
        v = 3.0 * w  # any scale: weight = g * v / ||v||
        out[f"vil_prediction.{ours}.weight_v"] = v
        out[f"vil_prediction.{ours}.weight_g"] = w.norm()
        out[f"vil_prediction.{ours}.bias"] = state[f"vil_prediction.{theirs}.bias"]
    return out


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
def test_beta_layout_converts_with_its_relu_head(reference_dir):
    model, _ = converted(reference_dir, "vl_tasks_model.bin", to_beta_layout)
    assert model.config.heads["vqa"]["style"] == "beta"
    kwargs, tm, im = fixture_inputs(reference_dir)
    ref = torch.load(reference_dir / "vl_tasks_outputs.pt", weights_only=True)
    out = run(model, kwargs)
    check_vl_tasks(out, ref, tm, im, vqa=False)
    # vilbert_beta's SimpleClassifier, by hand with torch's own weight norm.
    state = to_beta_layout(load_original_checkpoint(reference_dir / "vl_tasks_model.bin"))
    fc1, fc2 = torch.nn.Linear(32, 64), torch.nn.Linear(64, 3129)
    fc1, fc2 = (torch.nn.utils.weight_norm(m, dim=None) for m in (fc1, fc2))
    for m, key in ((fc1, "main.0"), (fc2, "main.3")):
        for p in ("weight_g", "weight_v", "bias"):
            getattr(m, p).data.copy_(state[f"vil_prediction.{key}.{p}"])
    with torch.no_grad():
        expected = fc2(torch.relu(fc1(out.fused)))
    torch.testing.assert_close(out.logits["vqa"], expected, **TOL)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda s: s.pop("bert.encoder.c_layer.1.biattention.key2.bias"), "missing key 'bert.encoder.c_layer.1.biattention.key2.bias'"),
        (lambda s: s.__setitem__("bert.encoder.c_layer.7.extra.weight", torch.zeros(1)), "unexpected key 'bert.encoder.c_layer.7.extra.weight'"),
        (lambda s: s.__setitem__("bert.v_pooler.dense.weight", torch.zeros(32, 25)), r"wrong shape for 'image_pooler.dense.weight'.*bert.v_pooler.dense.weight \(32, 25\)"),
        (lambda s: s.__setitem__("cls.predictions.decoder.weight", torch.zeros(128, 32)), "expected tied"),
    ],
)
def test_damaged_checkpoint_errors_name_the_key(reference_dir, damage, message):
    state = load_original_checkpoint(reference_dir / "pretrain_model.bin")
    damage(state)
    with pytest.raises(ConversionError, match=message):
        convert_original_checkpoint(state, config_from_original(reference_dir / "config.json"))


def test_convert_command_writes_a_loadable_directory(reference_dir, tmp_path, capsys):
    out_dir = tmp_path / "converted"
    rc = convert_main([str(reference_dir / "vl_tasks_model.bin"), "--config", str(reference_dir / "config.json"), "--out", str(out_dir)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "ignored (unused by the model): bert.encoder.c_layer.0.biOutput.q_dense1.weight" in printed
    model = load_pretrained(out_dir).eval()
    kwargs, tm, im = fixture_inputs(reference_dir)
    ref = torch.load(reference_dir / "vl_tasks_outputs.pt", weights_only=True)
    check_vl_tasks(run(model, kwargs), ref, tm, im)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a checkpoint")
    rc = convert_main([str(bad), "--config", str(reference_dir / "config.json"), "--out", str(tmp_path / "x")])
    assert rc == 2 and "bad.bin" in capsys.readouterr().err


def original_order(v_ids, t_ids, n_v, n_t):
    """The order in which the original encoder loop runs layers, per stream (its semantics)."""
    order, v0, t0 = [], 0, 0
    for k, (v1, t1) in enumerate(zip(v_ids, t_ids)):
        order += [f"visual_layers.{i}" for i in range(v0, v1)] + [f"text_layers.{i}" for i in range(t0, t1)]
        order.append(f"co_layers.{k}")
        v0, t0 = v1, t1
    return order + [f"visual_layers.{i}" for i in range(v0, n_v)] + [f"text_layers.{i}" for i in range(t0, n_t)]


@pytest.mark.parametrize(
    "v_ids, t_ids, n_v, n_t",
    [([0, 1], [2, 3], 2, 4), ([0, 2, 3], [1, 1, 3], 4, 3), ([1], [0], 3, 2), ([0, 1, 2, 3], [8, 9, 10, 11], 4, 12)],
)
def test_any_original_schedule_runs_as_the_original(reference_dir, v_ids, t_ids, n_v, n_t):
    original = json.loads((reference_dir / "config.json").read_text())
    original |= {"v_biattention_id": v_ids, "t_biattention_id": t_ids, "v_num_hidden_layers": n_v, "num_hidden_layers": n_t}
    model = build_model(config_from_original(original)).eval()
    order = []
    for name, module in model.encoder.named_children():
        for i, layer in enumerate(module):
            layer.register_forward_hook(lambda *_, tag=f"{name}.{i}": order.append(tag))
    kwargs, _, _ = fixture_inputs(reference_dir)
    with torch.no_grad():
        model(**kwargs)
    expected = original_order(v_ids, t_ids, n_v, n_t)
    # Within a segment the streams are independent; compare each stream's order and the co-layers' places.
    for stream in ("text_layers", "visual_layers"):
        keep = lambda seq: [x for x in seq if x.startswith((stream, "co_layers"))]  # noqa: E731
        assert keep(order) == keep(expected)


def test_convert_answers_names_the_vqa_outputs(reference_dir, tmp_path, capsys):
    """The original's trainval_label2ans.pkl (a pickled list) or a JSON list names the VQA head's
    outputs in config.json; without one, asking for answers says how to add them."""
    outputs = torch.load(reference_dir / "vl_tasks_outputs.pt", weights_only=True)["vil_prediction"].shape[1]
    answers = [f"answer {i}" for i in range(outputs)]
    pkl = tmp_path / "trainval_label2ans.pkl"
    pkl.write_bytes(pickle.dumps(answers, protocol=2))
    args = [str(reference_dir / "vl_tasks_model.bin"), "--config", str(reference_dir / "config.json")]
    assert convert_main([*args, "--answers", str(pkl), "--out", str(tmp_path / "named")]) == 0
    assert head_answers(load_pretrained(tmp_path / "named")) == answers
    listed = tmp_path / "answers.json"
    listed.write_text(json.dumps(answers[::-1]))
    assert convert_main([*args, "--answers", str(listed), "--out", str(tmp_path / "json")]) == 0
    assert head_answers(load_pretrained(tmp_path / "json")) == answers[::-1]

    assert convert_main([*args, "--out", str(tmp_path / "unnamed")]) == 0
    assert "add --answers" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--answers trainval_label2ans.pkl"):
        head_answers(load_pretrained(tmp_path / "unnamed"))

    short = tmp_path / "short.json"
    short.write_text(json.dumps(answers[:-1]))
    assert convert_main([*args, "--answers", str(short), "--out", str(tmp_path / "x")]) == 2
    assert f"lists {outputs - 1} answers but the VQA head has {outputs} outputs" in capsys.readouterr().err
    hostile = tmp_path / "hostile.pkl"
    hostile.write_bytes(pickle.dumps(os.system))  # a global outside the allow-list
    assert convert_main([*args, "--answers", str(hostile), "--out", str(tmp_path / "y")]) == 2
    assert "refusing to unpickle" in capsys.readouterr().err
    no_vqa = [str(reference_dir / "pretrain_model.bin"), "--config", str(reference_dir / "config.json")]
    assert convert_main([*no_vqa, "--answers", str(pkl), "--out", str(tmp_path / "z")]) == 2
    assert "no VQA head" in capsys.readouterr().err
