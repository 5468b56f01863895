"""Model directories as Hugging Face users expect them: from_pretrained / save_pretrained, the
tokenizer's files and a model card in the directory, config.json naming its model type and the
version that wrote it; a newer version's unknown key warns, a typo does not pass."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from vilbert import ViLBert
from vilbert.core.assets import bundled_vocab_path
from vilbert.data.tokenizer import Tokenizer, load_tokenizer
from vilbert.model import ViLBertConfig, build_model, load_preset


def _model() -> ViLBert:
    torch.manual_seed(0)
    config = load_preset("tiny")
    config.heads = {"vqa": {"num_answers": 2, "answers": ["yes", "no"]}, "alignment": {}}
    return build_model(config).eval()


def test_save_and_load_a_directory(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path / "m", trained_on="the tiny world", metrics={"test": {"accuracy": 0.5}})
    loaded = ViLBert.from_pretrained(tmp_path / "m")
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model_type"] == "vilbert" and config["vilbert_version"] == __import__("vilbert").__version__
    # the directory's own tokenizer is the library's
    assert (tmp_path / "m" / "vocab.txt").read_bytes() == bundled_vocab_path().read_bytes()
    assert Tokenizer(tmp_path / "m" / "vocab.txt").encode("a red cube") == load_tokenizer().encode("a red cube")
    assert json.loads((tmp_path / "m" / "tokenizer_config.json").read_text())["do_lower_case"] is True
    card = (tmp_path / "m" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: vilbert") and "`vqa`" in card and "2 answers" in card
    assert "the tiny world" in card and '"accuracy": 0.5' in card


def test_a_newer_versions_keys_warn_and_a_typo_fails(tmp_path):
    data = load_preset("tiny").to_dict()
    with pytest.warns(UserWarning, match=r"vilbert 99.0.0 has keys .* \['rope_scaling'\]"):
        config = ViLBertConfig.from_dict({**data, "vilbert_version": "99.0.0", "rope_scaling": 2})
    assert config == load_preset("tiny")
    with pytest.raises(ValueError, match=r"unknown ViLBertConfig keys \['hiden_size'\]"):
        ViLBertConfig.from_dict({**data, "vilbert_version": "0.0.1", "hiden_size": 3})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the file's own keys are no surprise
        ViLBertConfig.from_dict({**data, "model_type": "vilbert", "vilbert_version": "0.1.0"})


def test_a_hub_id_that_cannot_be_fetched_is_named(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network here: the cache is all there is
    with pytest.raises(FileNotFoundError, match="nobody/no-such-vilbert"):
        ViLBert.from_pretrained("nobody/no-such-vilbert")
