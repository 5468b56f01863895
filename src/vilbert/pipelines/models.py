"""Where a run's model comes from: a saved model directory, or a template (a preset or a config
file) built afresh, its region input fitted to the feature store and its text stream optionally
started from BERT.

A saved model's weights are fixed, so a store of another feature width is an error; a template
is a description, so it takes the store's feature width and region classes (and says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vilbert.core.assets import MINILM_LAYERS, MINILM_TEXT_STREAM, minilm_dir
from vilbert.model import (
    ViLBert,
    ViLBertConfig,
    build_model,
    init_text_stream_from_bert,
    load_preset,
    load_pretrained,
    text_stream_prefixes,
)
from vilbert.pipelines.logs import Log

TEXT_INIT_HELP = ("a BERT directory (config.json + weights) for the text stream; 'minilm': the shipped "
                  "all-MiniLM-L6-v2; 'none': from scratch; 'auto': MiniLM when the text stream has its shapes")


@dataclass(frozen=True)
class ModelSource:
    """Exactly one of `directory` (a saved model), `preset` or `config_file` (a template);
    `overrides` and `text_init` apply to templates."""

    directory: str | Path | None = None
    preset: str | None = None
    config_file: str | Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    text_init: str = "auto"  # "auto" | "minilm" | "none" | a BERT directory

    def __post_init__(self) -> None:
        given = [name for name in ("directory", "preset", "config_file") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of --init (a saved model directory), --preset or --config "
                             f"(a template built afresh); got {', '.join(given) or 'none'}")
        if self.directory is not None and (self.overrides or self.text_init not in ("auto", "none")):
            raise ValueError("--single-stream and --text-init apply to a preset or config file only "
                             "(a saved model has its own)")

    @property
    def saved(self) -> bool:
        return self.directory is not None

    def describe(self) -> str:
        if self.directory is not None:
            return f"the model in {self.directory}"
        return f"preset {self.preset!r}" if self.preset is not None else f"config {self.config_file}"

    def template(self) -> ViLBertConfig:
        """The template's config with its overrides (not yet fitted to a store)."""
        if self.directory is not None:
            raise ValueError(f"{self.describe()} is a saved model, not a template")
        if self.preset is not None:
            return load_preset(self.preset, **self.overrides)
        config = ViLBertConfig.from_json(self.config_file)
        return ViLBertConfig.from_dict({**config.to_dict(), **self.overrides}) if self.overrides else config

    def build(self, store_meta: dict[str, Any], store_path: str | Path, seed: int, log: Log) -> ViLBert:
        """The model: loaded (and checked against the store), or built from the template fitted to
        the store, with weights drawn after `torch.manual_seed(seed)` and the text stream from
        `text_init`."""
        if self.directory is not None:
            model = load_pretrained(self.directory)
            check_fits_store(model.config, store_meta, store_path, self.describe())
            return model
        config = fit_to_store(self.template(), store_meta, store_path, self.describe(), log)
        return new_model(config, resolve_text_init(self.text_init, config), seed, log)


def new_model(config: ViLBertConfig, text_init: Path | None, seed: int, log: Log) -> ViLBert:
    """A fresh model, the same weights in every process and run for a seed."""
    torch.manual_seed(seed)
    model = build_model(config)
    if text_init is not None:
        report = init_text_stream_from_bert(model, text_init)
        log(f"text stream from {text_init}: {len(report.loaded)} tensors loaded")
    return model


def fit_to_store(config: ViLBertConfig, store_meta: dict[str, Any], store_path: str | Path, source: str,
                 log: Log) -> ViLBertConfig:
    """`config` with its region input width and region classes set to the store's; each change is
    logged (a preset describes an architecture, the store decides what a region vector is)."""
    dim = int(store_meta.get("feature_dim") or 0)
    classes = int(store_meta.get("num_classes") or 0)
    if dim and dim != config.v_feature_size:
        log(f"{source} has v_feature_size {config.v_feature_size} but {store_path} holds {dim}-d features: using {dim}")
        config.v_feature_size = dim
    if classes and classes != config.v_target_size:
        log(f"{source} has v_target_size {config.v_target_size} but {store_path} has {classes} classes: "
            f"using {classes}")
        config.v_target_size = classes
    config.validate()
    return config


def check_fits_store(config: ViLBertConfig, store_meta: dict[str, Any], store_path: str | Path, source: str) -> None:
    """A saved model's input width must be the store's feature width (named in the error)."""
    width = store_meta.get("feature_dim")
    if width is not None and width != config.v_feature_size:
        raise ValueError(f"feature store {store_path} holds {width}-d features but {source} expects "
                         f"v_feature_size={config.v_feature_size}")


def resolve_text_init(text_init: str, config: ViLBertConfig) -> Path | None:
    """The BERT directory a template's text stream starts from, or None."""
    if text_init == "none":
        return None
    if text_init == "minilm":
        return minilm_dir()
    if text_init == "auto":
        return minilm_dir() if has_minilm_shapes(config) else None
    path = Path(text_init)
    if not path.is_dir():
        raise FileNotFoundError(f"--text-init {text_init}: no such BERT directory (or use minilm, none, auto)")
    return path


def has_minilm_shapes(config: ViLBertConfig) -> bool:
    """Whether the text stream can start from the shipped MiniLM (its widths, at most its depth)."""
    return (all(getattr(config, k) == v for k, v in MINILM_TEXT_STREAM.items())
            and config.num_hidden_layers <= MINILM_LAYERS)


def text_stream_lr_scales(model: ViLBert, scale: float) -> dict[str, float]:
    """`TrainConfig.lr_scales` giving the text stream (the weights BERT initialises) `scale` times
    the learning rate; {} for 1."""
    return {} if scale == 1.0 else {prefix: scale for prefix in text_stream_prefixes(model)}
