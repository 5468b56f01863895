"""Readers of the real formats, on hand-written records shaped like the real files, and their errors."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from vilbert.data.readers import (FormatError, normalize_answer, read_captions, read_flickr30k, read_refer,
                                  read_vcr, read_vqa, soft_score, tokens_to_words, vqa_paths)
from vilbert.data.readers.vcr import load_metadata
from vilbert.io.safe_pickle import UnsafePickleError


def _dump(path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


@pytest.mark.parametrize("raw, expected", [
    ("Yes", "yes"), ("Two.", "2"), ("the Red ", "red"), ("A dog!", "dog"), ("1,000", "1000"),
    ("3.5", "3.5"), ("dont", "don't"), ("none", "0"), ("blue/white", "blue white"), ("t-shirt", "t shirt"),
    ("yes, it is", "yes it is"), ("5.", "5"), ("hes", "he's"), ("well", "well"), ("(a) dog", "dog"),
])
def test_answer_normalisation(raw, expected):
    assert normalize_answer(raw) == expected


def test_soft_scores_step_by_three_tenths():
    assert [soft_score(c) for c in range(7)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0, 1.0]


def test_vqa_counts_normalised_answers(tmp_path):
    qs = {"questions": [{"image_id": 42, "question": "How many dogs?", "question_id": 4200}]}
    answers = ["2", "two", "Two.", "3", "2", "2", "three", "2", "2", "4"]
    anns = {"annotations": [{"question_id": 4200, "image_id": 42, "multiple_choice_answer": "2",
                             "answer_type": "number", "question_type": "how many",
                             "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                                         for k, a in enumerate(answers)]}]}
    (ex,) = read_vqa(_dump(tmp_path / "q.json", qs), _dump(tmp_path / "a.json", anns))
    assert ex.image_id == "42" and ex.answer_counts == {"2": 7, "3": 2, "4": 1}
    assert ex.scores == {"2": 1.0, "3": 0.6, "4": 0.3}
    (unlabelled,) = read_vqa(tmp_path / "q.json")
    assert unlabelled.answer_counts == {}
    assert vqa_paths("d", "val")[0].name == "v2_OpenEnded_mscoco_val_questions.json"


def test_vqa_errors_name_file_and_record(tmp_path):
    qs = _dump(tmp_path / "q.json", {"questions": [{"image_id": 1, "question_id": 7}]})
    with pytest.raises(FormatError, match=r"q\.json: question 0 lacks 'question'"):
        read_vqa(qs)
    qs = _dump(tmp_path / "q.json", {"questions": [{"image_id": 1, "question": "?", "question_id": 7}]})
    with pytest.raises(FormatError, match="no annotation for question_id 7"):
        read_vqa(qs, _dump(tmp_path / "a.json", {"annotations": []}))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(FormatError, match="bad.json: not valid JSON"):
        read_vqa(tmp_path / "bad.json")


def test_captions_tsv(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text("a red circle\t12\na dog, on grass\t13\n\n")
    assert [(c.caption, c.image_id) for c in read_captions(path)] == [("a red circle", "12"), ("a dog, on grass", "13")]
    path.write_text("no tab here\n")
    with pytest.raises(FormatError, match="line 1"):
        read_captions(path)


def test_flickr30k_ids_from_id_or_path(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps({"img_path": "1000092795.jpg", "sentences": ["a"] * 5}) + "\n"
                    + json.dumps({"id": 7, "img_path": "x/7.png", "sentences": ["b"] * 5}) + "\n")
    assert [r.image_id for r in read_flickr30k(path)] == ["1000092795", "7"]
    path.write_text(json.dumps({"img_path": "1.jpg", "sentences": "one caption"}) + "\n")
    with pytest.raises(FormatError, match=r"line 1 \(1\.jpg\)"):
        read_flickr30k(path)


def _refer_dir(tmp_path, refs) -> str:
    d = tmp_path / "refcoco+"
    d.mkdir()
    (d / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    _dump(d / "instances.json", {"images": [{"id": 9, "width": 640, "height": 480}],
                                 "annotations": [{"id": 901, "image_id": 9, "bbox": [10, 20, 30, 40], "category_id": 1}]})
    return str(d)


def test_refer_expressions_get_target_boxes(tmp_path):
    refs = [{"ref_id": 1, "ann_id": 901, "image_id": 9, "split": "testA", "category_id": 1,
             "sentences": [{"raw": "Man left", "sent": "man left", "tokens": ["man", "left"], "sent_id": 5},
                           {"raw": "guy", "sent": "guy", "sent_id": 6}]}]
    d = _refer_dir(tmp_path, refs)
    exprs = read_refer(d)
    assert [e.sentence for e in exprs] == ["man left", "guy"]
    assert exprs[0].box == (10, 20, 40, 60) and exprs[0].image_id == "9" and exprs[1].tokens == ("guy",)
    assert read_refer(d, "val") == [] and len(read_refer(d, "testA")) == 2


def test_refer_rejects_unknown_ann_and_unsafe_pickles(tmp_path):
    d = _refer_dir(tmp_path, [{"ref_id": 3, "ann_id": 5, "image_id": 9, "split": "val", "sentences": []}])
    with pytest.raises(FormatError, match="ref 3 names ann_id 5"):
        read_refer(d)
    with open(os.path.join(d, "refs(unc).p"), "wb") as f:
        pickle.dump([np.random.RandomState(0)], f)  # asks for a numpy global outside the allow-list
    with pytest.raises(UnsafePickleError, match="refs"):
        read_refer(d)


def _vcr_record(**over):
    rec = {"annot_id": "val-1", "img_fn": "movie/clip@1.jpg", "metadata_fn": "clip@1.json",
           "objects": ["person", "person", "car"],
           "question": ["Why", "is", [0, 1], "near", [2], "?"],
           "answer_choices": [["They", "wait", "."], "they run", [[1], "drives"], ["no"]],
           "answer_label": 2,
           "rationale_choices": [["a"], ["b"], ["c"], ["d"]], "rationale_label": 0}
    rec.update(over)
    return rec


def test_vcr_tokens_with_object_references(tmp_path):
    path = tmp_path / "val.jsonl"
    path.write_text(json.dumps(_vcr_record()) + "\n")
    _dump(tmp_path / "clip@1.json", {"boxes": [[0, 0, 5, 5, 0.9]] * 3, "width": 10, "height": 10})
    (ex,) = read_vcr(path)
    assert ex.question[2] == (0, 1) and ex.answer_choices[1] == ("they", "run") and ex.answer_label == 2
    words, refs = tokens_to_words(ex.question, ex.objects)
    assert words == ["Why", "is", "person", "and", "person", "near", "car", "?"]
    assert refs == [-1, -1, 0, -1, 1, -1, 2, -1]
    assert len(load_metadata(path, ex)["boxes"]) == 3


@pytest.mark.parametrize("over, message", [
    ({"question": ["who", [3]]}, r"val-1\) question has token \[3\]"),
    ({"answer_label": 4}, "answer_label=4 for 4 choices"),
    ({"objects": None, "question": "x"}, None),
])
def test_vcr_errors(tmp_path, over, message):
    rec = _vcr_record(**over)
    if message is None:  # a missing field
        del rec["objects"]
        message = "line 1 lacks 'objects'"
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(FormatError, match=message):
        read_vcr(path)
