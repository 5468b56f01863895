"""The model's one typed config, its JSON round trip, and the named presets.

The co-attention schedule is declarative: co-attention layer k runs right before text layer
`coattention_before_text_layer[k]` and right before visual layer
`coattention_before_visual_layer[k]` (an index equal to the stream's layer count means "after the
last layer"). This is exactly the original's `t_biattention_id` / `v_biattention_id`, so the
paper's 2/4/6/8 co-attention-layer ablation is a change of these two lists (and of
`v_num_hidden_layers`).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from vilbert import __version__
from vilbert.io.atomic import write_json

ARCHITECTURES = ("two_stream", "single_stream")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu")
# A config that asks for more is refused before anything is allocated (the paper's model: 0.25e9).
MODEL_TYPE = "vilbert"
FILE_KEYS = ("model_type", "vilbert_version")  # what config.json says of itself, not of the model
MAX_PARAMETERS = 5_000_000_000
MAX_LAYERS = 512  # per stream: a model is built layer by layer, so 10**5 tiny layers take hours
_SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
          "max_position_embeddings", "type_vocab_size", "v_feature_size", "v_hidden_size", "v_num_hidden_layers",
          "v_num_attention_heads", "v_intermediate_size", "v_target_size", "bi_hidden_size", "bi_num_attention_heads")
_PROBABILITIES = ("hidden_dropout_prob", "attention_probs_dropout_prob", "v_hidden_dropout_prob",
                  "v_attention_probs_dropout_prob")


@dataclass
class ViLBertConfig:
    """Every size and schedule of a ViLBERT (or single-stream baseline) model."""

    architecture: str = "two_stream"
    # Text stream (BERT).
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    # Visual stream.
    v_feature_size: int = 2048
    v_hidden_size: int = 1024
    v_num_hidden_layers: int = 6
    v_num_attention_heads: int = 8
    v_intermediate_size: int = 1024
    v_hidden_act: str = "gelu"
    v_hidden_dropout_prob: float = 0.1
    v_attention_probs_dropout_prob: float = 0.1
    v_target_size: int = 1601  # classes of the masked-region target (detector's cls_prob)
    # Co-attention (and pooled / fused width).
    bi_hidden_size: int = 1024
    bi_num_attention_heads: int = 8
    coattention_before_text_layer: list[int] = field(default_factory=lambda: [6, 7, 8, 9, 10, 11])
    coattention_before_visual_layer: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 5])
    initializer_range: float = 0.02
    # Heads: name -> constructor kwargs (see vilbert.model.heads.HEAD_TYPES).
    heads: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"masked_word": {}, "masked_region": {}, "alignment": {}}
    )
    # Task tokens (12-in-1): one learned embedding per named task, inserted after [CLS]; the row of
    # task k is k. Empty: none (the paper's model).
    task_tokens: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_coattention_layers(self) -> int:
        return len(self.coattention_before_text_layer)

    def validate(self) -> None:
        """Raise ValueError naming the first value of the wrong type or range, or inconsistent."""
        self._check_types()
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture {self.architecture!r} is not one of {ARCHITECTURES}")
        for act_name in ("hidden_act", "v_hidden_act"):
            if getattr(self, act_name) not in ACTIVATIONS:
                raise ValueError(f"{act_name} {getattr(self, act_name)!r} is not one of {ACTIVATIONS}")
        for width, heads in (
            ("hidden_size", "num_attention_heads"),
            ("v_hidden_size", "v_num_attention_heads"),
            ("bi_hidden_size", "bi_num_attention_heads"),
        ):
            w, h = getattr(self, width), getattr(self, heads)
            if w % h:
                raise ValueError(f"{width} {w} is not a multiple of {heads} {h}")
        t_ids, v_ids = self.coattention_before_text_layer, self.coattention_before_visual_layer
        if len(t_ids) != len(v_ids):
            raise ValueError(
                f"coattention_before_text_layer {t_ids} and coattention_before_visual_layer {v_ids} "
                "must have one entry per co-attention layer (same length)"
            )
        for name, ids, n in (
            ("coattention_before_text_layer", t_ids, self.num_hidden_layers),
            ("coattention_before_visual_layer", v_ids, self.v_num_hidden_layers),
        ):
            if any(b < a for a, b in zip(ids, ids[1:])) or any(not 0 <= i <= n for i in ids):
                raise ValueError(f"{name} {ids} must be non-decreasing layer indices in [0, {n}]")

    def _check_types(self) -> None:
        for name in _SIZES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: expected a whole number >= 1")
        for name in _PROBABILITIES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{name}={value!r}: expected a probability in [0, 1)")
        for name in ("layer_norm_eps", "initializer_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ValueError(f"{name}={value!r}: expected a number in (0, 1)")
        for name in ("coattention_before_text_layer", "coattention_before_visual_layer"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
                raise ValueError(f"{name}={value!r}: expected a list of layer indices")
        if not isinstance(self.heads, dict) or not all(isinstance(k, str) and isinstance(v, dict)
                                                       for k, v in self.heads.items()):
            raise ValueError(f"heads={self.heads!r}: expected an object of head name -> its arguments")
        if not isinstance(self.task_tokens, list) or not all(isinstance(t, str) and t for t in self.task_tokens):
            raise ValueError(f"task_tokens={self.task_tokens!r}: expected a list of task names")
        if len(set(self.task_tokens)) != len(self.task_tokens):
            raise ValueError(f"task_tokens={self.task_tokens!r}: a task is named twice")
        for name in ("num_hidden_layers", "v_num_hidden_layers"):
            if getattr(self, name) > MAX_LAYERS:
                raise ValueError(f"{name}={getattr(self, name)}: at most {MAX_LAYERS} layers per stream")
        if len(self.coattention_before_text_layer) > MAX_LAYERS:
            raise ValueError(f"{len(self.coattention_before_text_layer)} co-attention layers: at most {MAX_LAYERS}")
        if self.estimated_parameters() > MAX_PARAMETERS:
            raise ValueError(f"this config asks for about {self.estimated_parameters():,} parameters (more than "
                             f"{MAX_PARAMETERS:,}); check vocab_size, the widths and the layer counts")

    def estimated_parameters(self) -> int:
        """The weight matrices' parameter count, roughly (biases, norms and heads left out): enough to
        refuse a config that would not fit in memory before building it."""
        h, v, b = self.hidden_size, self.v_hidden_size, self.bi_hidden_size
        text = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * h
        text += self.num_hidden_layers * (4 * h * h + 2 * h * self.intermediate_size)
        visual = (self.v_feature_size + 5) * v + self.v_num_hidden_layers * (4 * v * v + 2 * v * self.v_intermediate_size)
        co = self.num_coattention_layers * (3 * b * (h + v) + b * (h + v) + 2 * h * self.intermediate_size
                                            + 2 * v * self.v_intermediate_size)
        return text + visual + co + (h + v) * b + v * self.v_target_size + len(self.task_tokens) * h

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ViLBertConfig":
        """The config of `data`. Keys this version does not know are an error (a typo), unless the
        file was written by a newer vilbert (its `vilbert_version`): then each is a warning and ignored."""
        if not isinstance(data, dict):
            raise ValueError(f"a ViLBertConfig is a JSON object of settings, got {type(data).__name__}")
        data_version = data.get("vilbert_version")
        data = {k: v for k, v in data.items() if k not in FILE_KEYS}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown and _newer(data_version):
            warnings.warn(f"config written by vilbert {data_version} has keys this version ({__version__}) does not "
                          f"know: {unknown}; ignored", stacklevel=2)
            data = {k: v for k, v in data.items() if k in known}
        elif unknown:
            raise ValueError(f"unknown ViLBertConfig keys {unknown}; valid keys: {sorted(known)}")
        return cls(**data)

    def to_json(self, path: str | Path) -> None:
        """The config as a model directory's config.json: its settings, `model_type` and the version."""
        write_json(path, {"model_type": MODEL_TYPE, "vilbert_version": __version__, **self.to_dict()})

    @classmethod
    def from_json(cls, path: str | Path) -> "ViLBertConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read a ViLBertConfig from {path}: {err}") from err
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err


def _newer(version: object) -> bool:
    """Whether `version` ("1.2.3") is a later vilbert than this one."""
    def parts(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in v.split(".")[:3] if p.isdigit())

    return isinstance(version, str) and parts(version) > parts(__version__)


def list_presets() -> list[str]:
    """Names of the presets shipped in vilbert/model/presets/*.json."""
    folder = resources.files("vilbert.model") / "presets"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def load_preset(name: str, **overrides: Any) -> ViLBertConfig:
    """The named preset's config, with keyword overrides (e.g. architecture="single_stream")."""
    valid = list_presets()
    if name not in valid:
        raise KeyError(f"unknown model preset {name!r}; valid presets: {', '.join(valid)}")
    text = (resources.files("vilbert.model") / "presets" / f"{name}.json").read_text()
    data = json.loads(text)
    data.pop("_comment", None)
    data.update(overrides)
    return ViLBertConfig.from_dict(data)
