"""VQA v2: `v2_OpenEnded_mscoco_<split>_questions.json` + `v2_mscoco_<split>_annotations.json`.

Soft scores follow the training target of the original ViLBERT (and of most VQA v2 code): an answer
given by c of the 10 annotators scores min(0.3 * c, 1), i.e. 0, 0.3, 0.6, 0.9, 1.0 for c = 0..4+.
(The official evaluation averages min(c'/3, 1) over the ten 9-annotator subsets; the 0.3 steps are
the usual rounded stand-in for that average.) Answers are normalised first, like the official
evaluation: lower case, punctuation dropped, articles dropped, number words turned into digits.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vilbert.data.readers.common import FormatError, load_json, require

_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {"dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "arent": "aren't", "cant": "can't",
                 "wont": "won't", "im": "i'm", "ive": "i've", "youre": "you're", "thats": "that's"}
_PUNCT = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$~|:]")
_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")  # a period that is not a decimal point
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3})")


def normalize_answer(answer: str) -> str:
    """'Two.' -> '2', 'the Red ' -> 'red', 'dont' -> "don't", '1,000' -> '1000'."""
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    text = _THOUSANDS.sub("", text)
    text = _PERIOD.sub("", _PUNCT.sub("", text.replace("'s", " 's")))
    words = [_CONTRACTIONS.get(_NUMBERS.get(w, w), _NUMBERS.get(w, w)) for w in text.split()]
    return " ".join(w for w in words if w not in _ARTICLES).replace(" 's", "'s")


def soft_score(count: int) -> float:
    """Training target for an answer given by `count` of 10 annotators: 0, .3, .6, .9, 1."""
    return min(1.0, round(0.3 * count, 1))


@dataclass(frozen=True)
class VQAExample:
    question_id: int
    image_id: str
    question: str
    answer_counts: dict[str, int] = field(default_factory=dict)  # normalised answer -> annotators
    multiple_choice_answer: str | None = None
    answer_type: str | None = None
    question_type: str | None = None

    @property
    def scores(self) -> dict[str, float]:
        """Soft score per normalised answer (answers nobody gave score 0)."""
        return {a: soft_score(c) for a, c in self.answer_counts.items()}


def vqa_paths(directory: str | os.PathLike[str], split: str) -> tuple[Path, Path]:
    """The question and annotation files of `split` in a VQA v2 directory."""
    d = Path(directory)
    return d / f"v2_OpenEnded_mscoco_{split}_questions.json", d / f"v2_mscoco_{split}_annotations.json"


def read_vqa(questions_path: str | os.PathLike[str],
             annotations_path: str | os.PathLike[str] | None = None) -> list[VQAExample]:
    """Questions (and, when given, their answers), in the questions file's order."""
    questions = load_json(questions_path)
    require(questions, ("questions",), questions_path, "the top level")
    annotations: dict[int, dict] = {}
    if annotations_path is not None:
        data = load_json(annotations_path)
        require(data, ("annotations",), annotations_path, "the top level")
        for k, ann in enumerate(data["annotations"]):
            require(ann, ("question_id", "answers"), annotations_path, f"annotation {k}")
            annotations[ann["question_id"]] = ann
    out = []
    for k, q in enumerate(questions["questions"]):
        require(q, ("question_id", "image_id", "question"), questions_path, f"question {k}")
        qid = q["question_id"]
        if annotations_path is None:
            out.append(VQAExample(qid, str(q["image_id"]), q["question"]))
            continue
        ann = annotations.get(qid)
        if ann is None:
            raise FormatError(f"{annotations_path}: no annotation for question_id {qid} of {questions_path}")
        out.append(_example(q, ann, annotations_path))
    return out


def _example(q: dict, ann: dict, path: str | os.PathLike[str]) -> VQAExample:
    counts: Counter[str] = Counter()
    for a in ann["answers"]:
        if not isinstance(a, dict) or "answer" not in a:
            raise FormatError(f"{path}: question_id {q['question_id']}: an answer lacks 'answer': {a!r:.80}")
        counts[normalize_answer(a["answer"])] += 1
    mc = ann.get("multiple_choice_answer")
    return VQAExample(q["question_id"], str(q["image_id"]), q["question"], dict(counts),
                      normalize_answer(mc) if mc is not None else None, ann.get("answer_type"),
                      ann.get("question_type"))
