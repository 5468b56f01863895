"""Checkpoints users already have -> our parameter layout.

Two pure `state_dict -> state_dict` conversions, each driven by an explicit key map that is
checked in full (every source key used or knowingly ignored, every target key filled, every shape
right) before anything is loaded:

- `convert_original_checkpoint`: the original ViLBERT code's checkpoints, both the
  vilbert-multi-task layouts (BertForMultiModalPreTraining, VILBertForVLTasks, with or without
  its task tokens) and vilbert_beta's (weight-normalised VQA head), with or without
  DataParallel's `module.` prefix, plus `config_from_original` for the original config.json.
- `init_text_stream_from_bert`: a Hugging Face BERT directory (config.json + model.safetensors or
  pytorch_model.bin, `BertModel` key names, with or without a `bert.` prefix) into the text stream.

Our self-attention and co-attention project queries, keys and values in one matmul, so the
original's separate query/key/value weights are concatenated (in that order) along dim 0.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file

from vilbert.io.safe_pickle import safe_loads
from vilbert.model.config import ViLBertConfig
from vilbert.model.vilbert import ViLBert, build_model

Tensor = torch.Tensor
StateDict = dict[str, Tensor]

# Original keys that exist in checkpoints but feed nothing we compute.
ORIGINAL_IGNORED = [
    r"bert\.encoder\.c_layer\.\d+\.biOutput\.q_dense[12]\.(weight|bias)",  # never used by the original
    r"vil_prediction_gqa\..*",  # GQA head of the multi-task release
    r"vil_binary_prediction\..*",  # NLVR2 head (pairs of images)
    r"vil_tri_prediction\..*",  # visual entailment head
    r"linguisic_logit\..*",  # per-token score, no task of ours uses it
]

# vilbert-multi-task's task tokens (`bert.embeddings.task_embeddings`, 20 rows): row k is TASKk of
# its vilbert_tasks.yml. Ours by our task names where we have the task (retrieval is Flickr30k's,
# refer RefCOCO+'s), the others by the yml's names; rows 0 and 19 belong to no task there.
ORIGINAL_TASK_TOKENS = [
    "task0", "vqa", "genome_qa", "visual_dialog", "visual7w", "vcr_q_a", "vcr_qa_r", "retrieval_coco", "retrieval",
    "refcoco", "refer", "refcocog", "nlvr2", "visual_entailment", "guesswhat", "gqa", "foil", "guesswhat_pointing",
    "flickr_grounding", "task19",
]
TASK_TOKENS_KEY = "bert.embeddings.task_embeddings.weight"

# Original config keys that either match ours by name or are known to be inert.
_SAME_NAME = [
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
    "type_vocab_size", "initializer_range", "v_feature_size", "v_target_size", "v_hidden_size",
    "v_num_hidden_layers", "v_num_attention_heads", "v_intermediate_size", "v_hidden_act",
    "v_hidden_dropout_prob", "v_attention_probs_dropout_prob", "bi_hidden_size", "bi_num_attention_heads",
]


class ConversionError(ValueError):
    """A checkpoint that does not match the expected layout (names the key and the problem)."""


@dataclass
class ConversionReport:
    loaded: list[str] = field(default_factory=list)  # our keys that were filled
    ignored: list[str] = field(default_factory=list)  # source keys deliberately not used
    left: list[str] = field(default_factory=list)  # our keys not filled (init_text_stream_from_bert)

    def summary(self) -> str:
        return f"{len(self.loaded)} tensors loaded, {len(self.ignored)} source tensors ignored, {len(self.left)} left as initialised"


# ---------------------------------------------------------------------------------------------
# Original config -> ViLBertConfig


def config_from_original(original: dict[str, Any] | str | Path, heads: dict[str, dict] | None = None) -> ViLBertConfig:
    """The original code's BertConfig JSON (dict or path) as a ViLBertConfig."""
    source = "original config"
    if not isinstance(original, dict):
        source = str(original)
        try:
            original = json.loads(Path(original).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConversionError(f"cannot read the original config {source}: {err}") from err
        if not isinstance(original, dict):
            raise ConversionError(f"{source}: expected a JSON object of settings, got {type(original).__name__}")
    data = {k: original[k] for k in _SAME_NAME if k in original}
    for key in ("v_biattention_id", "t_biattention_id"):
        if key not in original:
            raise ConversionError(f"{source} has no {key!r}: is it a ViLBERT config?")
    for key in ("v_biattention_id", "t_biattention_id"):
        if not isinstance(original[key], list):
            raise ConversionError(f"{source}: {key}={original[key]!r} is not a list of layer indices")
    data["coattention_before_visual_layer"] = list(original["v_biattention_id"])
    data["coattention_before_text_layer"] = list(original["t_biattention_id"])
    if original.get("with_coattention", True) is False:
        raise ConversionError(f"{source} has with_coattention=false; only co-attention models are supported")
    for key, ok in (("fusion_method", "mul"), ("pooling_method", "mul")):
        if original.get(key, ok) != ok:
            raise ConversionError(f"{source}: {key}={original[key]!r} is not supported (only {ok!r})")
    if original.get("dynamic_attention"):
        raise ConversionError(f"{source}: dynamic_attention=true is not supported")
    data["architecture"] = "two_stream"
    data["heads"] = heads if heads is not None else {}
    try:
        return ViLBertConfig.from_dict(data)
    except ValueError as err:
        raise ConversionError(f"{source}: {err}") from err


# ---------------------------------------------------------------------------------------------
# Explicit key maps: our key -> (source keys, how to combine them)

Source = tuple[list[str], Callable[[list[Tensor]], Tensor]]


def _one(key: str) -> Source:
    return [key], lambda ts: ts[0]


def _cat(*keys: str) -> Source:
    return list(keys), lambda ts: torch.cat(ts, dim=0)


def _linear(ours: str, theirs: str) -> dict[str, Source]:
    return {f"{ours}.weight": _one(f"{theirs}.weight"), f"{ours}.bias": _one(f"{theirs}.bias")}


def _qkv(ours: str, q: str, k: str, v: str) -> dict[str, Source]:
    return {
        f"{ours}.proj.weight": _cat(f"{q}.weight", f"{k}.weight", f"{v}.weight"),
        f"{ours}.proj.bias": _cat(f"{q}.bias", f"{k}.bias", f"{v}.bias"),
    }


def _bert_layer(ours: str, theirs: str) -> dict[str, Source]:
    """One BERT layer, original/HF names (`attention.self.query`, `intermediate.dense`, ...)."""
    a = f"{theirs}.attention"
    return {
        **_qkv(f"{ours}.qkv", f"{a}.self.query", f"{a}.self.key", f"{a}.self.value"),
        **_linear(f"{ours}.attn_out.dense", f"{a}.output.dense"),
        **_linear(f"{ours}.attn_out.norm", f"{a}.output.LayerNorm"),
        **_linear(f"{ours}.ffn.fc", f"{theirs}.intermediate.dense"),
        **_linear(f"{ours}.ffn.out.dense", f"{theirs}.output.dense"),
        **_linear(f"{ours}.ffn.out.norm", f"{theirs}.output.LayerNorm"),
    }


def _bert_text_map(config: ViLBertConfig, prefix: str, layers_key: str) -> dict[str, Source]:
    """Text embeddings + text layers, from BERT names under `prefix` (e.g. "bert.")."""
    e = f"{prefix}embeddings"
    out = {
        "text_embeddings.word.weight": _one(f"{e}.word_embeddings.weight"),
        "text_embeddings.position.weight": _one(f"{e}.position_embeddings.weight"),
        "text_embeddings.token_type.weight": _one(f"{e}.token_type_embeddings.weight"),
        **_linear("text_embeddings.norm", f"{e}.LayerNorm"),
    }
    for i in range(config.num_hidden_layers):
        out.update(_bert_layer(f"encoder.{layers_key}.{i}", f"{prefix}encoder.layer.{i}"))
    return out


def _original_encoder_map(config: ViLBertConfig) -> dict[str, Source]:
    out = _bert_text_map(config, "bert.", "text_layers")
    v = "bert.v_embeddings"
    out.update(_linear("image_embeddings.features", f"{v}.image_embeddings"))
    out.update(_linear("image_embeddings.locations", f"{v}.image_location_embeddings"))
    out.update(_linear("image_embeddings.norm", f"{v}.LayerNorm"))
    for i in range(config.v_num_hidden_layers):
        out.update(_bert_layer(f"encoder.visual_layers.{i}", f"bert.encoder.v_layer.{i}"))
    for k in range(config.num_coattention_layers):
        ours, c = f"encoder.co_layers.{k}", f"bert.encoder.c_layer.{k}"
        b = f"{c}.biattention"
        # In the original, stream 1 is vision (query1/key1/value1, dense1, LayerNorm1) and
        # stream 2 is text.
        out.update(_qkv(f"{ours}.image_qkv", f"{b}.query1", f"{b}.key1", f"{b}.value1"))
        out.update(_qkv(f"{ours}.text_qkv", f"{b}.query2", f"{b}.key2", f"{b}.value2"))
        out.update(_linear(f"{ours}.image_out.dense", f"{c}.biOutput.dense1"))
        out.update(_linear(f"{ours}.image_out.norm", f"{c}.biOutput.LayerNorm1"))
        out.update(_linear(f"{ours}.text_out.dense", f"{c}.biOutput.dense2"))
        out.update(_linear(f"{ours}.text_out.norm", f"{c}.biOutput.LayerNorm2"))
        out.update(_linear(f"{ours}.image_ffn.fc", f"{c}.v_intermediate.dense"))
        out.update(_linear(f"{ours}.image_ffn.out.dense", f"{c}.v_output.dense"))
        out.update(_linear(f"{ours}.image_ffn.out.norm", f"{c}.v_output.LayerNorm"))
        out.update(_linear(f"{ours}.text_ffn.fc", f"{c}.t_intermediate.dense"))
        out.update(_linear(f"{ours}.text_ffn.out.dense", f"{c}.t_output.dense"))
        out.update(_linear(f"{ours}.text_ffn.out.norm", f"{c}.t_output.LayerNorm"))
    out.update(_linear("text_pooler.dense", "bert.t_pooler.dense"))
    out.update(_linear("image_pooler.dense", "bert.v_pooler.dense"))
    return out


def _weight_norm(g: Tensor, v: Tensor) -> Tensor:
    """torch.nn.utils.weight_norm with dim=None: w = g * v / ||v|| (Frobenius norm, scalar g)."""
    return g * v / v.norm()


def _head_maps(state: StateDict) -> tuple[dict[str, dict], dict[str, Source]]:
    """Heads present in an original checkpoint -> (our head configs, their key maps)."""
    heads: dict[str, dict] = {}
    out: dict[str, Source] = {}
    if "cls.predictions.bias" in state:
        heads["masked_word"] = {}
        out.update(_linear("heads.masked_word.transform.dense", "cls.predictions.transform.dense"))
        out.update(_linear("heads.masked_word.transform.norm", "cls.predictions.transform.LayerNorm"))
        out["heads.masked_word.bias"] = _one("cls.predictions.bias")
    if "cls.imagePredictions.decoder.weight" in state:
        heads["masked_region"] = {}
        out.update(_linear("heads.masked_region.transform.dense", "cls.imagePredictions.transform.dense"))
        out.update(_linear("heads.masked_region.transform.norm", "cls.imagePredictions.transform.LayerNorm"))
        out.update(_linear("heads.masked_region.decoder", "cls.imagePredictions.decoder"))
    if "cls.bi_seq_relationship.weight" in state:
        heads["alignment"] = {}
        out.update(_linear("heads.alignment.linear", "cls.bi_seq_relationship"))
    if "vil_prediction.logit_fc.3.weight" in state:  # vilbert-multi-task
        hidden, answers = state["vil_prediction.logit_fc.3.weight"].shape[1], state["vil_prediction.logit_fc.3.weight"].shape[0]
        heads["vqa"] = {"num_answers": answers, "hidden": hidden}
        out.update(_linear("heads.vqa.fc1", "vil_prediction.logit_fc.0"))
        out.update(_linear("heads.vqa.norm", "vil_prediction.logit_fc.2"))
        out.update(_linear("heads.vqa.fc2", "vil_prediction.logit_fc.3"))
    elif "vil_prediction.main.3.weight_v" in state:  # vilbert_beta: weight-normalised
        hidden, answers = state["vil_prediction.main.3.weight_v"].shape[1], state["vil_prediction.main.3.weight_v"].shape[0]
        heads["vqa"] = {"num_answers": answers, "hidden": hidden, "style": "beta"}
        for ours, theirs in (("fc1", "main.0"), ("fc2", "main.3")):
            t = f"vil_prediction.{theirs}"
            out[f"heads.vqa.{ours}.weight"] = ([f"{t}.weight_g", f"{t}.weight_v"], lambda ts: _weight_norm(*ts))
            out[f"heads.vqa.{ours}.bias"] = _one(f"{t}.bias")
    if "vil_logit.weight" in state:
        heads["pair_score"] = {}
        out.update(_linear("heads.pair_score.linear", "vil_logit"))
    if "vision_logit.weight" in state:
        heads["region_score"] = {}
        out.update(_linear("heads.region_score.linear", "vision_logit"))
    return heads, out


def _apply_map(
    mapping: dict[str, Source], source: StateDict, target_shapes: dict[str, torch.Size], what: str
) -> StateDict:
    """Build our tensors from `source` by `mapping`, naming any missing key or wrong shape."""
    converted: StateDict = {}
    for ours, (keys, combine) in mapping.items():
        absent = [k for k in keys if k not in source]
        if absent:
            raise ConversionError(f"{what}: missing key {absent[0]!r} (needed for {ours!r})")
        tensor = combine([source[k] for k in keys])
        if ours not in target_shapes:
            raise ConversionError(f"{what}: internal key map names {ours!r}, which the model lacks")
        if tuple(tensor.shape) != tuple(target_shapes[ours]):
            shapes = ", ".join(f"{k} {tuple(source[k].shape)}" for k in keys)
            raise ConversionError(
                f"{what}: wrong shape for {ours!r}: got {tuple(tensor.shape)} from {shapes}, "
                f"the config expects {tuple(target_shapes[ours])}"
            )
        converted[ours] = tensor.detach().clone().float().contiguous()
    return converted


def _shapes(config: ViLBertConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        model = build_model(config)
    return {k: v.shape for k, v in model.state_dict().items()}


def strip_module_prefix(state: StateDict) -> StateDict:
    """Remove DataParallel's `module.` prefix (from every key, or from none)."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def convert_original_checkpoint(
    state: StateDict, config: ViLBertConfig, what: str = "checkpoint"
) -> tuple[ViLBertConfig, StateDict, ConversionReport]:
    """An original ViLBERT state dict (+ its converted config) -> (config with the checkpoint's
    heads, our state dict, report). Raises ConversionError naming any missing or unexpected key
    or wrong shape."""
    state = strip_module_prefix(state)
    heads, head_map = _head_maps(state)
    tokens: list[str] = []
    if TASK_TOKENS_KEY in state:  # trained with --task_specific_tokens (multi_task_model.bin)
        rows = state[TASK_TOKENS_KEY].shape[0]
        tokens = ORIGINAL_TASK_TOKENS[:rows] + [f"task{i}" for i in range(len(ORIGINAL_TASK_TOKENS), rows)]
        head_map["task_embeddings.weight"] = _one(TASK_TOKENS_KEY)
    config = ViLBertConfig.from_dict({**config.to_dict(), "heads": heads, "task_tokens": tokens})
    mapping = {**_original_encoder_map(config), **head_map}
    converted = _apply_map(mapping, state, _shapes(config), what)
    used = {k for keys, _ in mapping.values() for k in keys}
    tied = "cls.predictions.decoder.weight"
    if tied in state:
        # The decoder is tied to the word embeddings; a checkpoint where they differ is not ours to guess.
        if not torch.equal(state[tied], state["bert.embeddings.word_embeddings.weight"]):
            raise ConversionError(f"{what}: {tied} differs from bert.embeddings.word_embeddings.weight (expected tied)")
        used.add(tied)
    ignored = [k for k in state if k not in used and any(re.fullmatch(p, k) for p in ORIGINAL_IGNORED)]
    unexpected = [k for k in state if k not in used and k not in ignored]
    if unexpected:
        raise ConversionError(f"{what}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all)")
    expected = set(_shapes(config))
    unfilled = sorted(expected - set(converted))
    if unfilled:
        raise ConversionError(f"{what}: nothing in the checkpoint fills {unfilled[0]!r}")
    return config, converted, ConversionReport(loaded=sorted(converted), ignored=sorted(ignored))


def load_original_checkpoint(path: str | Path) -> StateDict:
    """torch.load an original checkpoint safely (tensors only)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise ConversionError(f"cannot read {path} as a tensors-only PyTorch checkpoint: {err}") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConversionError(f"{path} does not hold a state dict of tensors")
    return state


def read_answers(path: str | Path) -> list[str]:
    """The original's VQA answer list: a pickle of the list (`trainval_label2ans.pkl`, read through
    the allow-list unpickler) or a JSON list of strings, index = the head's output."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"answer list {path} does not exist")
    raw = path.read_bytes()
    try:
        answers = json.loads(raw) if path.suffix == ".json" else safe_loads(raw, str(path))
    except (ValueError, pickle.UnpicklingError, EOFError) as err:
        raise ConversionError(f"cannot read {path} as an answer list (a pickled or JSON list of strings): {err}") from err
    if isinstance(answers, dict):  # label2ans saved as {index: answer}
        if sorted(answers) != list(range(len(answers))):
            raise ConversionError(f"{path}: a dict answer list must map 0..N-1 to answers")
        answers = [answers[i] for i in range(len(answers))]
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise ConversionError(f"{path}: expected a list of answer strings, got {type(answers).__name__}")
    return answers


def with_answers(config: ViLBertConfig, answers: list[str], source: str) -> ViLBertConfig:
    """`config` with its VQA head naming `answers` (one per output, in order)."""
    if "vqa" not in config.heads:
        raise ConversionError(f"{source}: the checkpoint has no VQA head to name answers for "
                              f"(its heads: {', '.join(config.heads) or 'none'})")
    outputs = config.heads["vqa"].get("num_answers")
    if outputs != len(answers):
        raise ConversionError(f"{source} lists {len(answers)} answers but the VQA head has {outputs} outputs")
    heads = {**config.heads, "vqa": {**config.heads["vqa"], "answers": list(answers)}}
    return ViLBertConfig.from_dict({**config.to_dict(), "heads": heads})


def convert_original(checkpoint: str | Path, original_config: str | Path,
                     answers: str | Path | None = None) -> tuple[ViLBert, ConversionReport]:
    """Read an original checkpoint and its config.json (and, for a VQA head, its answer list) and
    return our model (eval mode) + report."""
    config = config_from_original(original_config)
    state = load_original_checkpoint(checkpoint)
    config, converted, report = convert_original_checkpoint(state, config, what=str(checkpoint))
    if answers is not None:
        config = with_answers(config, read_answers(answers), str(answers))
    model = build_model(config)
    model.load_state_dict(converted, strict=True)
    return model.eval(), report


# ---------------------------------------------------------------------------------------------
# BERT directory -> text stream


def _read_bert_weights(directory: Path) -> StateDict:
    if (directory / "model.safetensors").is_file():
        return load_file(str(directory / "model.safetensors"))
    if (directory / "pytorch_model.bin").is_file():
        return load_original_checkpoint(directory / "pytorch_model.bin")
    raise FileNotFoundError(f"{directory} has neither model.safetensors nor pytorch_model.bin")


def text_stream_prefixes(model: ViLBert) -> list[str]:
    """Module prefixes of the weights `init_text_stream_from_bert` fills: the text embeddings and
    the text layers (the shared layers of the single-stream baseline). Used to give them their own
    learning rate (`TrainConfig.lr_scales`) when the BERT directory is not at hand."""
    layers = "encoder.layers." if model.config.architecture == "single_stream" else "encoder.text_layers."
    return ["text_embeddings.", layers]


def init_text_stream_from_bert(model: ViLBert, bert_dir: str | Path) -> ConversionReport:
    """Load a Hugging Face BERT directory's embeddings and layers into the model's text stream.

    The BERT's sizes must match the model's text stream (checked against its config.json and each
    tensor's shape), except that a model with fewer text layers takes the BERT's first layers (a
    shallower stream, as DistilBERT-style truncation). Returns which of our keys were loaded and
    which were left as initialised; BERT keys we do not use (pooler, MLM head, layers beyond the
    model's) are listed as ignored.
    """
    bert_dir = Path(bert_dir)
    cfg_path = bert_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{bert_dir} is not a BERT directory: config.json is missing")
    try:
        bert_cfg = json.loads(cfg_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConversionError(f"{cfg_path}: not a readable BERT config ({err})") from err
    if not isinstance(bert_cfg, dict):
        raise ConversionError(f"{cfg_path}: a BERT config is a JSON object, got {type(bert_cfg).__name__}")
    c = model.config
    for key in ("hidden_size", "num_attention_heads", "intermediate_size", "vocab_size"):
        if key in bert_cfg and bert_cfg[key] != getattr(c, key):
            raise ConversionError(f"{cfg_path}: {key}={bert_cfg[key]} but the model's text stream has {getattr(c, key)}")
    if bert_cfg.get("num_hidden_layers", c.num_hidden_layers) < c.num_hidden_layers:
        raise ConversionError(f"{cfg_path}: num_hidden_layers={bert_cfg['num_hidden_layers']} but the model's text "
                              f"stream has {c.num_hidden_layers} (it may have fewer, not more)")
    state = strip_module_prefix(_read_bert_weights(bert_dir))
    prefix = "bert." if any(k.startswith("bert.embeddings.") for k in state) else ""
    layers_key = "text_layers" if c.architecture == "two_stream" else "layers"
    mapping = _bert_text_map(c, prefix, layers_key)
    ours = model.state_dict()
    shapes = {k: v.shape for k, v in ours.items()}
    # A shorter position table (e.g. a tiny model) takes the first rows.
    pos_key = f"{prefix}embeddings.position_embeddings.weight"
    if pos_key in state and state[pos_key].shape[0] > c.max_position_embeddings:
        state = {**state, pos_key: state[pos_key][: c.max_position_embeddings]}
    converted = _apply_map(mapping, state, shapes, str(bert_dir))
    model.load_state_dict(converted, strict=False)
    used = {k for keys, _ in mapping.values() for k in keys}
    return ConversionReport(
        loaded=sorted(converted),
        ignored=sorted(k for k in state if k not in used),
        left=sorted(k for k in ours if k not in converted),
    )
