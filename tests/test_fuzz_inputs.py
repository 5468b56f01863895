"""Property-based fuzzing of every door data comes in by: the readers of each real format, the
legacy record decoder, the store's record decoder, model config loading and the tokenizer.

Each reader gets valid files with one value replaced by an arbitrary JSON value (or removed), and
wholly arbitrary documents. The property: it returns, or raises one of the library's documented
errors, whose message names the file. Never a raw TypeError, KeyError or AttributeError.
"""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vilbert.core.regions import ImageRegions
from vilbert.data.readers import FormatError, read_captions, read_flickr30k, read_refer, read_vcr, read_vqa
from vilbert.data.tokenizer import load_tokenizer
from vilbert.features.boxes import read_coco_boxes, read_vcr_boxes
from vilbert.features.legacy import legacy_record
from vilbert.features.store import DamagedStoreError, decode_record, encode_record
from vilbert.io.safe_pickle import UnsafePickleError
from vilbert.model import ViLBertConfig, load_preset
from vilbert.model.convert import ConversionError, config_from_original

FUZZ = settings(max_examples=int(__import__("os").environ.get("FUZZ_EXAMPLES", 60)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(value, prefix=()):
    """Every place inside a JSON-like value: tuples of keys and indices."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated(draw, template):
    """`template` with one place replaced by an arbitrary value or removed, or an arbitrary document."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    doc = copy.deepcopy(template)
    place = draw(st.sampled_from(list(_paths(doc))[1:]))
    parent = doc
    for key in place[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[place[-1]]
    else:
        parent[place[-1]] = draw(json_values)
    return doc


def _refused_naming(call, path: Path, errors=(FormatError,)):
    """`call()` either returns or raises one of `errors`, whose message names `path`."""
    try:
        return call()
    except errors as err:
        assert str(path) in str(err), f"{type(err).__name__} does not name {path}: {err}"


def _write(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc))
    return path


VQA_QUESTIONS = {"questions": [{"question_id": 11, "image_id": 1, "question": "is it red?"},
                               {"question_id": 12, "image_id": 2, "question": "how many?"}]}
VQA_ANNOTATIONS = {"annotations": [
    {"question_id": 11, "answers": [{"answer": "yes"}] * 10, "multiple_choice_answer": "yes", "answer_type": "yes/no",
     "question_type": "is it"},
    {"question_id": 12, "answers": [{"answer": "2"}] * 10, "multiple_choice_answer": "2", "answer_type": "number",
     "question_type": "how many"}]}


@FUZZ
@given(questions=mutated(VQA_QUESTIONS), annotations=mutated(VQA_ANNOTATIONS))
def test_vqa_reader(tmp_path, questions, annotations):
    q, a = _write(tmp_path / "q.json", questions), _write(tmp_path / "a.json", annotations)
    try:
        read_vqa(q, a)
    except FormatError as err:
        assert str(q) in str(err) or str(a) in str(err), err


VCR_LINE = {"annot_id": "val-1", "img_fn": "1.png", "metadata_fn": "1.json", "objects": ["person", "dog"],
            "question": ["what", "is", [0], "doing", "?"], "answer_choices": [["running"], ["sitting", [1]]],
            "answer_label": 1, "rationale_choices": [["because"], ["since", [0, 1]]], "rationale_label": 0}
VCR_META = {"boxes": [[1, 2, 30, 40, 0.9], [5, 5, 20, 20, 0.8]], "names": ["person", "dog"], "width": 64, "height": 64}


@FUZZ
@given(line=mutated(VCR_LINE), meta=mutated(VCR_META))
def test_vcr_reader_and_its_metadata(tmp_path, line, meta):
    path = tmp_path / "val.jsonl"
    path.write_text(json.dumps(line) + "\n")
    _write(tmp_path / "1.json", meta)
    examples = _refused_naming(lambda: read_vcr(path), path)
    if examples:
        _refused_naming(lambda: read_vcr_boxes([path], tmp_path), path, (FormatError, FileNotFoundError)) \
            if examples[0].metadata_fn != "1.json" else \
            _refused_naming(lambda: read_vcr_boxes([path], tmp_path), tmp_path / "1.json")


FLICKR_LINE = {"img_path": "images/1.jpg", "sentences": ["a dog", "a red dog"], "id": 1}


@FUZZ
@given(lines=st.lists(mutated(FLICKR_LINE), min_size=1, max_size=3))
def test_flickr30k_reader(tmp_path, lines):
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    _refused_naming(lambda: read_flickr30k(path), path)


@FUZZ
@given(data=st.binary(max_size=200) | st.text(max_size=60).map(lambda t: t.encode("utf-8")))
def test_caption_reader(tmp_path, data):
    path = tmp_path / "train.tsv"
    path.write_bytes(data)
    _refused_naming(lambda: read_captions(path), path)


REFS = [{"ref_id": 7, "ann_id": 3, "image_id": 1, "split": "val", "category_id": 1,
         "sentences": [{"sent": "the red ball", "sent_id": 70, "tokens": ["the", "red", "ball"]}]}]
INSTANCES = {"images": [{"id": 1, "width": 64, "height": 48}],
             "annotations": [{"id": 3, "image_id": 1, "bbox": [2, 3, 20, 10], "category_id": 1}]}


@FUZZ
@given(refs=mutated(REFS), instances=mutated(INSTANCES))
def test_refer_reader(tmp_path, refs, instances):
    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    _write(tmp_path / "instances.json", instances)
    try:
        read_refer(tmp_path, "val")
    except (FormatError, UnsafePickleError) as err:
        assert "refs(unc).p" in str(err) or "instances.json" in str(err), err


COCO = {"images": [{"id": 1, "file_name": "1.png", "width": 64, "height": 48}],
        "annotations": [{"id": 5, "image_id": 1, "bbox": [2, 3, 20, 10], "score": 0.9}]}


@FUZZ
@given(doc=mutated(COCO))
def test_coco_boxes_reader(tmp_path, doc):
    path = _write(tmp_path / "boxes.json", doc)
    _refused_naming(lambda: read_coco_boxes(path, tmp_path), path)


LEGACY = {"image_id": 1, "image_h": 48, "image_w": 64, "num_boxes": 2, "boxes": [[0, 0, 10, 10], [5, 5, 20, 20]],
          "features": [[0.5] * 6, [1.5] * 6]}


@FUZZ
@given(record=mutated(LEGACY))
def test_legacy_record_decoder(record):
    assume(isinstance(record, dict) or True)
    try:
        regions = legacy_record(record, "17", "orig.lmdb")
    except ValueError as err:
        assert "orig.lmdb" in str(err) and "'17'" in str(err), err
    else:
        assert np.isfinite(regions.features).all() and regions.boxes.shape[1] == 4


_RECORD = encode_record(ImageRegions("1", 64, 48, np.array([[0, 0, 10, 10], [5, 5, 20, 20]], np.float32),
                                     np.arange(12, dtype=np.float32).reshape(2, 6),
                                     np.full((2, 3), 1 / 3, np.float32), objects=np.array([1, 2], np.int32)))


@FUZZ
@given(cut=st.integers(0, len(_RECORD)), flips=st.lists(st.tuples(st.integers(0, len(_RECORD) - 1),
                                                                   st.integers(1, 255)), max_size=4),
       tail=st.binary(max_size=8))
def test_store_record_decoder(cut, flips, tail):
    data = bytearray(_RECORD)
    for at, mask in flips:
        data[at] ^= mask
    data = bytes(data[:cut]) + tail
    try:
        got = decode_record("1", data, "store.lmdb")
    except DamagedStoreError as err:
        assert "store.lmdb" in str(err) and "'1'" in str(err), err
    else:  # only an intact record reads
        assert data == _RECORD and got.num_boxes == 2


PRESET = load_preset("tiny").to_dict()


@FUZZ
@given(doc=mutated(PRESET))
def test_model_config_loading(tmp_path, doc):
    path = _write(tmp_path / "config.json", doc)
    try:
        config = ViLBertConfig.from_json(path)
    except ValueError as err:
        assert str(path) in str(err), err
    else:
        assert config.estimated_parameters() > 0


ORIGINAL = json.loads((Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "reference" /
                       "config.json").read_text()) if (Path(__file__).resolve().parents[2] / "shared").is_dir() else {
    "hidden_size": 32, "num_attention_heads": 4, "v_biattention_id": [0, 1], "t_biattention_id": [2, 3]}


@FUZZ
@given(doc=mutated(ORIGINAL))
def test_original_config_conversion(tmp_path, doc):
    path = _write(tmp_path / "bert_config.json", doc)
    _refused_naming(lambda: config_from_original(path), path, (ConversionError,))


@settings(max_examples=150, deadline=None)
@given(a=st.text(max_size=40), b=st.text(max_size=40), length=st.integers(3, 40))
def test_tokenizer_takes_any_text(a, b, length):
    tok = load_tokenizer()
    ids = tok.encode(a, length)
    pair, types = tok.encode_pair(a, b, length)
    assert len(ids) <= length and len(pair) == len(types) <= length
    assert all(0 <= i < tok.vocab_size for i in ids + pair)
    assert ids[0] == tok.cls_id and ids[-1] == tok.sep_id and pair.count(tok.sep_id) >= 2


@pytest.mark.parametrize("reader", [read_vqa, read_vcr, read_flickr30k, read_captions])
def test_a_missing_file_is_named(tmp_path, reader):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        reader(tmp_path / "nowhere")
