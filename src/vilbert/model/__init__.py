"""The ViLBERT model: config and presets, the two-stream model, the single-stream baseline,
task heads, directory save/load and conversion of original and BERT checkpoints."""

from vilbert.model.config import ViLBertConfig, list_presets, load_preset
from vilbert.model.convert import convert_original, init_text_stream_from_bert, text_stream_prefixes
from vilbert.model.heads import HEAD_TYPES
from vilbert.model.pretrained import load_pretrained, save_pretrained
from vilbert.model.vilbert import ViLBert, ViLBertOutput, build_model

__all__ = [
    "HEAD_TYPES",
    "ViLBert",
    "ViLBertConfig",
    "ViLBertOutput",
    "build_model",
    "convert_original",
    "init_text_stream_from_bert",
    "list_presets",
    "load_pretrained",
    "load_preset",
    "text_stream_prefixes",
    "save_pretrained",
]
