"""Readers of the real datasets' file formats (and so of the generated world), into plain dataclasses."""

from vilbert.data.readers.captions import CaptionPair, read_captions
from vilbert.data.readers.common import FormatError
from vilbert.data.readers.flickr30k import RetrievalImage, read_flickr30k
from vilbert.data.readers.refer import ReferExpression, read_refer
from vilbert.data.readers.vcr import VCRExample, read_vcr, tokens_to_words
from vilbert.data.readers.vqa import VQAExample, normalize_answer, read_vqa, soft_score, vqa_paths

__all__ = [
    "CaptionPair", "FormatError", "RetrievalImage", "ReferExpression", "VCRExample", "VQAExample",
    "normalize_answer", "read_captions", "read_flickr30k", "read_refer", "read_vcr", "read_vqa",
    "soft_score", "tokens_to_words", "vqa_paths",
]
