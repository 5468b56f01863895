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
from vilbert.world.scene import COLOURS, OPPOSITE, RELATIONS, SHAPES, Scene, relation, resolve, select, unique_filter

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

    The true answer keeps at least 4 votes (soft score 1), so the majority answer is the truth.
    Two questions in five get ten agreeing answers, the rest 0-2 mistaken votes on average
    (intermediate soft scores for the confusions): people agree closely on such questions (the
    VQA paper measures human accuracy on yes/no questions at ~96%). Noisier annotators (the world
    once drew reliabilities of 0.6-0.95) give a yes/no confusion 3+ votes so often that
    answering "yes" to every yes/no question scores 0.7: the metric then cannot tell a model
    that reads the image from one that does not.
    """
    reliability = 1.0 if rng.random() < 0.4 else float(rng.uniform(0.85, 0.98))
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


def vcr_items(scene: Scene, rng: np.random.Generator, count: int = 1) -> list[dict]:
    """Up to `count` VCR-style items, each a question, 4 answers and 4 rationales (token lists,
    [i] = objects[i]), about distinct (anchor, relation) pairs of one scene (VCR, too, asks
    several questions about a movie frame); fewer when the scene has fewer such pairs."""
    n = len(scene.objects)
    # Object references are read as shape names ("[0]" -> "circle"), so the anchor's shape must be
    # unique in the scene or the question would not say which object it is about.
    shapes = [o.shape for o in scene.objects]
    pairs = [(a, r) for a in range(n) for r in RELATIONS
             if shapes.count(shapes[a]) == 1 and _only_object(scene, a, r) is not None]
    items: list[dict] = []
    for k in rng.permutation(len(pairs))[:count]:
        anchor, rel = pairs[int(k)]
        target = _only_object(scene, anchor, rel)
        phrase = tokenize(pick(rng, REL_PHRASES[rel]))
        colour = scene.objects[target].colour
        colour_question = bool(rng.random() < 0.5)
        if colour_question:
            question: list[Token] = ["What", "color", "is", "the", "object"] + phrase + ["the", _ref(anchor), "?"]
            wrong = _distractors(colour, [o.colour for o in scene.objects], tuple(COLOURS), rng)
            answers = [["It", "is", c, "."] for c in [colour] + wrong]
        else:
            question = ["Which", "object", "is"] + phrase + ["the", _ref(anchor), "?"]
            # Choices name shapes in words (not object references, which only the right one
            # could have); wrong ones are shapes other than the target's and the anchor's.
            wrong_shapes = _other_shapes(shapes, target, anchor, rng)
            answers = [["the", s, "is"] + phrase + ["the", _ref(anchor), "."] for s in [shapes[target]] + wrong_shapes]
        # Every rationale has the same template and agrees with the answer's text; only the image
        # tells which one is true. (A right rationale with its own wording was solvable from text.)
        rationales = _rationales(scene, target, anchor, phrase, colour_question, rng)
        a_order = [int(i) for i in rng.permutation(4)]
        r_order = [int(i) for i in rng.permutation(4)]
        items.append({
            "question": question,
            "answer_choices": [answers[i] for i in a_order],
            "answer_label": a_order.index(0),
            "rationale_choices": [rationales[i] for i in r_order],
            "rationale_label": r_order.index(0),
            "objects": [o.shape for o in scene.objects],
            "program": {"target": target, "anchor": anchor, "rel": rel},
        })
    return items


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


def _other_shapes(shapes: list[str], target: int, anchor: int, rng: np.random.Generator) -> list[str]:
    """Three shape names that are neither the target's nor the anchor's (wrong choices)."""
    pool = [s for s in SHAPES if s not in (shapes[target], shapes[anchor])]
    return [pool[int(i)] for i in rng.permutation(len(pool))[:3]]


def _rationale(subject: str, phrase: list[str], anchor: int, colour: str) -> list[Token]:
    return ["the", subject, "is", "the", "only", "object"] + phrase + ["the", _ref(anchor), ",", "and", "the", subject,
                                                                "is", colour, "."]


def _rationales(scene: Scene, target: int, anchor: int, phrase: list[str], colour_question: bool,
                rng: np.random.Generator) -> list[list[Token]]:
    """The right rationale first, then 3 wrong ones that read as well but the image contradicts.

    A colour question's answer names only a colour, so wrong rationales keep that colour and put
    another shape in the target's place; a "which object" answer names the target, so wrong
    rationales keep the target and give it a colour it does not have.
    """
    colour = scene.objects[target].colour
    right = _rationale(scene.objects[target].shape, phrase, anchor, colour)
    if colour_question:
        wrong_shapes = _other_shapes([o.shape for o in scene.objects], target, anchor, rng)
        return [right] + [_rationale(s, phrase, anchor, colour) for s in wrong_shapes]
    wrong = _distractors(colour, [o.colour for o in scene.objects], tuple(COLOURS), rng)
    return [right] + [_rationale(scene.objects[target].shape, phrase, anchor, c) for c in wrong]
