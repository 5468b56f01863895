"""VQA v2: `v2_OpenEnded_mscoco_<split>_questions.json` + `v2_mscoco_<split>_annotations.json`.

Soft scores follow the training target of the original ViLBERT (and of most VQA v2 code): an answer
given by c of the 10 annotators scores min(0.3 * c, 1), i.e. 0, 0.3, 0.6, 0.9, 1.0 for c = 0..4+.
(The official evaluation averages min(c'/3, 1) over the ten 9-annotator subsets; with ten answers
that average is exactly 0, 0.3, 0.6, 0.9, 1.) Answers are normalised first with the official
evaluation's rules: lower case, punctuation dropped or made a space, articles dropped, number
words turned into digits, contractions given their apostrophes.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vilbert.data.readers.common import FormatError, id_field, load_json, require, text_field

_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# Contractions written without their apostrophes -> the contraction. Spellings that are words of
# their own ("well", "were", "its", "ill", "shed", "shell", "hell", "wed", "lets", "id") are left
# alone.
_CONTRACTION_FORMS = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't "
    "haven't he'd he'd've he's how'd how'll how's i'd've i'm i've isn't it'd it'd've it'll "
    "ma'am mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't shan't "
    "she'd've she's should've shouldn't shouldn't've somebody'd somebody'll somebody's "
    "someone'd someone'll someone's something'd something'll something's that's there'd there'd've "
    "there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've we've weren't "
    "what'll what're what's what've when's where'd where's where've who'd who'd've who'll who's "
    "who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd "
    "you'd've you'll you're you've"
).split()
_CONTRACTIONS = {form.replace("'", ""): form for form in _CONTRACTION_FORMS}
# The official evaluation's punctuation: each mark is deleted where it touches a space (or the
# answer holds a digit-comma-digit number) and otherwise becomes a space, so "black/white" ->
# "black white" and "t-shirt" -> "t shirt", but "yes, it is" -> "yes it is".
_PUNCTUATION = ";/[]\"{}()=+\\_-><@`,?!"
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD = re.compile(r"\.(?!\d)")  # a period not followed by a digit ("5." -> "5", "3.5" kept)


def _strip_punctuation(text: str) -> str:
    out = text
    has_number_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in _PUNCTUATION:
        touches_space = f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if touches_space or has_number_comma else " ")
    return _PERIOD.sub("", out)


def normalize_answer(answer: str) -> str:
    """As the official VQA evaluation: 'Two.' -> '2', 'the Red ' -> 'red', 'dont' -> "don't",
    '1,000' -> '1000', 'black/white' -> 'black white'. (The official script normalises only
    when the ten answers disagree; we always do, so that equal answers count together.)"""
    text = _strip_punctuation(answer.replace("\n", " ").replace("\t", " ").strip())
    words = (_NUMBERS.get(w, w) for w in text.lower().split())
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


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
    _check_list(questions["questions"], questions_path, "questions")
    annotations: dict[int | str, dict] = {}
    if annotations_path is not None:
        data = load_json(annotations_path)
        require(data, ("annotations",), annotations_path, "the top level")
        _check_list(data["annotations"], annotations_path, "annotations")
        for k, ann in enumerate(data["annotations"]):
            require(ann, ("question_id", "answers"), annotations_path, f"annotation {k}")
            qid = id_field(ann, "question_id", annotations_path, f"annotation {k}")
            if qid in annotations:
                raise FormatError(f"{annotations_path}: annotation {k}: question_id {qid!r} is annotated twice")
            annotations[qid] = ann
    out = []
    seen: set[int | str] = set()
    for k, q in enumerate(questions["questions"]):
        where = f"question {k}"
        require(q, ("question_id", "image_id", "question"), questions_path, where)
        qid = id_field(q, "question_id", questions_path, where)
        if qid in seen:
            raise FormatError(f"{questions_path}: {where}: question_id {qid!r} appears twice")
        seen.add(qid)
        image_id = str(id_field(q, "image_id", questions_path, where))
        text_field(q, "question", questions_path, where)
        if annotations_path is None:
            out.append(VQAExample(qid, image_id, q["question"]))
            continue
        ann = annotations.get(qid)
        if ann is None:
            raise FormatError(f"{annotations_path}: no annotation for question_id {qid} of {questions_path}")
        out.append(_example(q, ann, annotations_path))
    return out


def _check_list(value: object, path: str | os.PathLike[str], key: str) -> None:
    if not isinstance(value, list):
        raise FormatError(f"{path}: {key!r} must be a list, got a {type(value).__name__}")


def _example(q: dict, ann: dict, path: str | os.PathLike[str]) -> VQAExample:
    where = f"question_id {q['question_id']}"
    if not isinstance(ann["answers"], list):
        raise FormatError(f"{path}: {where}: 'answers' must be a list, got {ann['answers']!r:.60}")
    counts: Counter[str] = Counter()
    for a in ann["answers"]:
        if not isinstance(a, dict) or "answer" not in a:
            raise FormatError(f"{path}: {where}: an answer lacks 'answer': {a!r:.80}")
        counts[normalize_answer(text_field(a, "answer", path, where, empty=True))] += 1
    for key in ("multiple_choice_answer", "answer_type", "question_type"):
        if ann.get(key) is not None:
            text_field(ann, key, path, where, empty=True)
    mc = ann.get("multiple_choice_answer")
    return VQAExample(q["question_id"], str(q["image_id"]), q["question"], dict(counts),
                      normalize_answer(mc) if mc is not None else None, ann.get("answer_type"),
                      ann.get("question_type"))
