"""Questions about scenes: VQA (four families, balanced answers, 10 noisy annotators) and VCR.

Each question is built from a program that `answer` evaluates on a scene, so a test can perturb
the scene (swap two objects) and recompute. Answers are balanced by construction: the answer is
drawn first (yes/no 50/50, a target count, ...) and the question is then built to have it, which
keeps a text-only guesser near the majority answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vilbert.world.language import REL_PHRASES, noun_phrase, pick, tokenize
from vilbert.world.scene import (
    COLOURS, OPPOSITE, RELATIONS, SHAPES, Scene, relation, resolve, select, unique_filter,
)

FAMILIES: tuple[str, ...] = ("existence", "counting", "attribute", "relation")

CONFUSIONS: dict[str, tuple[str, ...]] = {
    "yes": ("no",), "no": ("yes",),
    "red": ("orange", "purple"), "orange": ("red", "yellow"), "yellow": ("orange", "white"),
    "green": ("cyan", "blue"), "cyan": ("green", "blue"), "blue": ("purple", "cyan"),
    "purple": ("blue", "red"), "white": ("yellow", "cyan"),
    "circle": ("square", "diamond"), "square": ("diamond", "circle"), "diamond": ("square", "triangle"),
    "triangle": ("diamond", "star"), "star": ("cross", "triangle"), "cross": ("star", "square"),
}


@dataclass
class Question:
    family: str
    question: str
    answer: str
    program: dict
    question_type: str  # the VQA v2 style prefix ("is there a", "how many", ...)
    answer_type: str  # "yes/no" | "number" | "other"


def answer(scene: Scene, program: dict) -> str | None:
    """Evaluate a question program on a scene; None when the question is ill-posed there."""
    op = program["op"]
    if op == "exist":
        return "yes" if select(scene, program["filter"]) else "no"
    if op == "count":
        return str(len(select(scene, program["filter"])))
    if op == "query":
        found = resolve(scene, program["object"])
        return getattr(scene.objects[found[0]], program["attr"]) if len(found) == 1 else None
    if op == "relate":
        a, b = select(scene, program["a"]), select(scene, program["b"])
        if len(a) != 1 or len(b) != 1:
            return None
        if relation(scene, a[0], b[0], program["rel"]):
            return "yes"
        if relation(scene, a[0], b[0], OPPOSITE[program["rel"]]):
            return "no"
        return None  # within the margin: neither clearly true nor clearly false
    raise ValueError(f"unknown question op {op!r}")


def _random_filter(rng: np.random.Generator, form: tuple[str, ...]) -> dict:
    values = {"shape": SHAPES, "colour": tuple(COLOURS), "size": ("small", "large")}
    return {k: pick(rng, values[k]) for k in form}


def _existence(scene: Scene, rng: np.random.Generator) -> Question | None:
    form = (("shape",), ("colour",), ("colour", "shape"), ("size", "shape"))[int(rng.integers(4))]
    if rng.random() < 0.5:
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        filt = {k: getattr(obj, k) for k in form}
    else:
        for _ in range(30):
            filt = _random_filter(rng, form)
            if not select(scene, filt):
                break
        else:
            return None
    text = pick(rng, ("is there a {}?", "is there any {} in the image?")).format(noun_phrase(filt))
    program = {"op": "exist", "filter": filt}
    return Question("existence", text, answer(scene, program), program, "is there a", "yes/no")


# Counting forms, and for each the chance that a scene offers an answer of 0, 1, 2, 3 (measured
# over 3,000 sampled scenes). The target count is drawn with weights 1/chance, so that within each
# form every count is asked and answered about equally often: the form of a counting question
# says nothing about its answer. "red squares" rarely come in threes, so that form stops at 2.
COUNT_FORMS: tuple[tuple[tuple[str, ...], tuple[float, ...]], ...] = (
    (("shape",), (0.63, 0.68, 0.57, 0.28)),
    (("colour",), (0.72, 0.69, 0.58, 0.28)),
    (("colour", "shape"), (0.93, 0.95, 0.47)),
)


def _counting(scene: Scene, rng: np.random.Generator) -> Question | None:
    form, chance = COUNT_FORMS[int(rng.integers(len(COUNT_FORMS)))]
    weights = 1.0 / np.array(chance)
    target = int(rng.choice(len(chance), p=weights / weights.sum()))
    if target == 0:
        filt = _random_filter(rng, form)
        if select(scene, filt):
            return None
    else:
        options = sorted({tuple(getattr(o, f) for f in form) for o in scene.objects})
        options = [v for v in options if len(select(scene, dict(zip(form, v)))) == target]
        if not options:
            return None  # no fallback to another count: that would skew the answers
        filt = dict(zip(form, options[int(rng.integers(len(options)))]))
    text = pick(rng, ("how many {} are there?", "how many {} are in the image?")).format(
        noun_phrase(filt, plural=True))
    program = {"op": "count", "filter": filt}
    return Question("counting", text, answer(scene, program), program, "how many", "number")


def _attribute(scene: Scene, rng: np.random.Generator) -> Question | None:
    index = int(rng.integers(len(scene.objects)))
    attr = "colour" if rng.random() < 0.5 else "shape"
    filt = unique_filter(scene, index, rng, exclude=(attr,))
    if filt is None:
        return None
    word = "color" if attr == "colour" else "shape"
    text = f"what {word} is the {noun_phrase(filt)}?"
    program = {"op": "query", "attr": attr, "object": {"filter": filt}}
    return Question("attribute", text, answer(scene, program), program, f"what {word} is the", "other")


def _relation_yes_no(scene: Scene, rng: np.random.Generator) -> Question | None:
    n = len(scene.objects)
    for _ in range(10):
        a, b = (int(i) for i in rng.choice(n, size=2, replace=False))
        fa, fb = unique_filter(scene, a, rng), unique_filter(scene, b, rng)
        true = [r for r in RELATIONS if relation(scene, a, b, r)]
        if fa is None or fb is None or not true:
            continue
        rel = pick(rng, true)
        if rng.random() < 0.5:
            rel = OPPOSITE[rel]
        text = f"is the {noun_phrase(fa)} {pick(rng, REL_PHRASES[rel])} the {noun_phrase(fb)}?"
        program = {"op": "relate", "a": fa, "rel": rel, "b": fb}
        return Question("relation", text, answer(scene, program), program, "is the", "yes/no")
    return None


def _relation_query(scene: Scene, rng: np.random.Generator) -> Question | None:
    n = len(scene.objects)
    for _ in range(6):
        index, other = (int(i) for i in rng.choice(n, size=2, replace=False))
        anchor = unique_filter(scene, other, rng)
        if anchor is None:
            continue
        rel = pick(rng, RELATIONS)  # directional only: swapping the two objects must matter
        attr = "colour" if rng.random() < 0.5 else "shape"
        keep = () if rng.random() < 0.6 else (("shape",) if attr == "colour" else ("colour",))
        target = {k: getattr(scene.objects[index], k) for k in keep}
        program = {"filter": target, "rel": rel, "anchor": anchor}
        if resolve(scene, program) != [index]:
            continue
        word = "color" if attr == "colour" else "shape"
        head = noun_phrase(target, generic=pick(rng, ("object", "shape", "thing")))
        text = f"what {word} is the {head} {pick(rng, REL_PHRASES[rel])} the {noun_phrase(anchor)}?"
        qprog = {"op": "query", "attr": attr, "object": program}
        return Question("relation", text, answer(scene, qprog), qprog, f"what {word} is the", "other")
    return None


def _relation(scene: Scene, rng: np.random.Generator) -> Question | None:
    return _relation_yes_no(scene, rng) if rng.random() < 0.5 else _relation_query(scene, rng)


MAKERS = {"existence": _existence, "counting": _counting, "attribute": _attribute, "relation": _relation}


def vqa_questions(scene: Scene, rng: np.random.Generator, per_family: int = 2) -> list[Question]:
    """Up to `per_family` distinct questions of each family (fewer when the scene cannot pose one)."""
    out: list[Question] = []
    for family in FAMILIES:
        seen: set[str] = set()
        for _ in range(per_family * 3):  # makers may decline a scene; try again, a few times
            q = MAKERS[family](scene, rng)
            if q is not None and q.question not in seen and q.answer is not None:
                seen.add(q.question)
                out.append(q)
            if len(seen) == per_family:
                break
    return out


def annotator_answers(truth: str, rng: np.random.Generator) -> list[str]:
    """Ten human answers: a per-question reliability, confusions drawn from plausible mistakes.

    The true answer keeps at least 4 votes (soft score 1), so the majority answer is the truth,
    while 1-6 other votes give intermediate soft scores to the confusions.
    """
    reliability = 1.0 if rng.random() < 0.35 else float(rng.uniform(0.6, 0.95))
    options = CONFUSIONS.get(truth) or (str(max(int(truth) - 1, 0)), str(int(truth) + 1))
    answers = [truth if rng.random() < reliability else pick(rng, options) for _ in range(10)]
    short = 4 - answers.count(truth)
    for i in range(10):
        if short <= 0:
            break
        if answers[i] != truth:
            answers[i], short = truth, short - 1
    return answers


# ---------------------------------------------------------------------------------------- VCR

Token = str | list[int]


def _ref(i: int) -> list[int]:
    return [i]


def vcr_item(scene: Scene, rng: np.random.Generator) -> dict | None:
    """A VCR-style item: question, 4 answers, 4 rationales (token lists, [i] = objects[i])."""
    n = len(scene.objects)
    pairs = [(a, r) for a in range(n) for r in RELATIONS if _only_object(scene, a, r) is not None]
    for k in rng.permutation(len(pairs)):
        anchor, rel = pairs[int(k)]
        target = _only_object(scene, anchor, rel)
        phrase = tokenize(pick(rng, REL_PHRASES[rel]))
        colour = scene.objects[target].colour
        if rng.random() < 0.5 or n < 4:
            question: list[Token] = ["What", "color", "is", "the", "object"] + phrase + [_ref(anchor), "?"]
            wrong = _distractors(colour, [o.colour for o in scene.objects], tuple(COLOURS), rng)
            answers = [["It", "is", c, "."] for c in [colour] + wrong]
        else:
            question = ["Which", "object", "is"] + phrase + [_ref(anchor), "?"]
            # Wrong choices name other detected objects (the anchor too: "[1] is left of [1]").
            others = [int(i) for i in rng.permutation(n) if i != target]
            if len(others) < 3:
                continue
            wrong_objs = others[:3]
            answers = [[_ref(i), "is"] + phrase + [_ref(anchor), "."] for i in [target] + wrong_objs]
        right = ([_ref(target), "is", "the", "only", "object"] + phrase + [_ref(anchor), ",", "and", _ref(target),
                 "is", colour, "."])
        false_rationales = _false_rationales(scene, target, anchor, rel, phrase, rng)
        if len(false_rationales) < 3:
            continue
        a_order = [int(i) for i in rng.permutation(4)]
        r_order = [int(i) for i in rng.permutation(4)]
        rationales = [right] + false_rationales[:3]
        return {
            "question": question,
            "answer_choices": [answers[i] for i in a_order],
            "answer_label": a_order.index(0),
            "rationale_choices": [rationales[i] for i in r_order],
            "rationale_label": r_order.index(0),
            "objects": [o.shape for o in scene.objects],
            "program": {"target": target, "anchor": anchor, "rel": rel},
        }
    return None


def _only_object(scene: Scene, anchor: int, rel: str) -> int | None:
    """The one object clearly `rel` of `anchor` (a VCR anchor is named by index, not attributes)."""
    others = [i for i in range(len(scene.objects)) if i != anchor]
    strict = [i for i in others if relation(scene, i, anchor, rel)]
    loose = [i for i in others if relation(scene, i, anchor, rel, strict=False)]
    return strict[0] if len(strict) == 1 and strict == loose else None


def _distractors(truth: str, present: list[str], vocab: tuple[str, ...], rng: np.random.Generator) -> list[str]:
    pool = [c for c in dict.fromkeys(present) if c != truth]  # plausible: colours in the picture
    pool += [c for c in rng.permutation(vocab).tolist() if c != truth and c not in pool]
    return pool[:3]


def _false_rationales(scene: Scene, target: int, anchor: int, rel: str, phrase: list[str],
                      rng: np.random.Generator) -> list[list[Token]]:
    out: list[list[Token]] = []
    for i in [int(k) for k in rng.permutation(len(scene.objects))]:
        if i not in (target, anchor) and not relation(scene, i, anchor, rel, strict=False):
            out.append([_ref(i), "is", "the", "only", "object"] + phrase + [_ref(anchor), "."])
    wrong_colour = pick(rng, [c for c in COLOURS if c != scene.objects[target].colour])
    out.append([_ref(target), "is", wrong_colour, "and", "lies"] + tokenize(REL_PHRASES[OPPOSITE[rel]][0])
               + [_ref(anchor), "."])
    out.append(["There", "is", "nothing"] + phrase + [_ref(anchor), "."])
    out.append([_ref(anchor), "is"] + phrase + [_ref(target), "."])  # the relation reversed
    return [out[int(i)] for i in rng.permutation(len(out))]
