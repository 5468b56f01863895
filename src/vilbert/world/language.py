"""Words for scenes: object descriptions, captions and referring expressions.

Every referring expression is built from a program (see `scene.resolve`) that names exactly one
object; the program is kept beside the text so tests can re-check uniqueness against the scene.
"""

from __future__ import annotations

import collections

import numpy as np

from vilbert.world.scene import RELATIONS, Scene, relation, resolve, select, unique_filter

REL_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("left of", "to the left of"),
    "right": ("right of", "to the right of"),
    "above": ("above", "over"),
    "below": ("below", "under"),
    "nearest": ("nearest to", "closest to"),
}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")


def pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def noun_phrase(filt: dict, plural: bool = False, generic: str = "object") -> str:
    """'large red circle', 'red object', 'circles' ... from an attribute filter."""
    words = [filt[k] for k in ("size", "colour") if k in filt]
    noun = filt.get("shape", generic)
    if plural:
        noun = noun + ("es" if noun.endswith("s") else "s")
    return " ".join(words + [noun])


def describe_object(scene: Scene, index: int) -> str:
    o = scene.objects[index]
    return f"{o.size} {o.colour} {o.shape}"


# ------------------------------------------------------------------------------------ captions


def _clear_pairs(scene: Scene) -> list[tuple[int, int, str]]:
    pairs = []
    for a in range(len(scene.objects)):
        for b in range(len(scene.objects)):
            if a != b:
                pairs += [(a, b, r) for r in RELATIONS if relation(scene, a, b, r)]
    return pairs


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _caption(scene: Scene, rng: np.random.Generator, style: int) -> str:
    n = len(scene.objects)
    order = [int(i) for i in rng.permutation(n)]
    if style == 0:  # list of objects, identical ones counted: "two small red circles"
        counts = collections.Counter(describe_object(scene, i) for i in order)
        names = [_a(d) if k == 1 else f"{NUMBER_WORDS[k]} {d}{'es' if d.endswith('s') else 's'}"
                 for d, k in list(counts.items())[:3]]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        return pick(rng, ("a picture of ", "an image with ", "")) + listed
    if style == 1:  # one relation
        pairs = _clear_pairs(scene)
        if pairs:
            a, b, r = pairs[int(rng.integers(len(pairs)))]
            verb = pick(rng, ("is", "sits", "appears"))
            return f"{_a(describe_object(scene, a))} {verb} {pick(rng, REL_PHRASES[r])} {_a(describe_object(scene, b))}"
    if style == 2:  # counts per shape
        shapes = sorted({o.shape for o in scene.objects})
        parts = []
        for s in shapes:
            k = len(select(scene, {"shape": s}))
            parts.append(f"{NUMBER_WORDS[k]} {noun_phrase({'shape': s}, plural=k > 1)}")
        return f"{NUMBER_WORDS[n]} shapes: " + ", ".join(parts)
    if style == 3:  # colours
        colours = sorted({o.colour for o in scene.objects})
        if len(colours) > 1:
            return f"{pick(rng, ('shapes in', 'objects colored', 'a scene in'))} {', '.join(colours[:-1])} and {colours[-1]}"
    # style 4, and the fallback of styles that do not fit the scene: two objects, no relation
    i, j = order[0], order[1]
    return f"there is {_a(describe_object(scene, i))} {pick(rng, ('near', 'and', 'along with'))} {_a(describe_object(scene, j))}"


def captions(scene: Scene, rng: np.random.Generator, count: int) -> list[str]:
    """`count` distinct captions in varied templates (distinct when the scene allows it)."""
    out: list[str] = []
    for attempt in range(count * 6):
        text = _caption(scene, rng, int(rng.integers(5)) if attempt >= 5 else attempt % 5)
        if text not in out:
            out.append(text)
        if len(out) == count:
            break
    while len(out) < count:  # tiny scenes: repeat rather than return fewer
        out.append(out[len(out) % max(len(out), 1)])
    return [" ".join(c.split()) for c in out]


# --------------------------------------------------------------------------- referring expressions


def referring_program(scene: Scene, index: int, rng: np.random.Generator) -> dict | None:
    """A program naming object `index` alone: attributes, or attributes + relation to an anchor."""
    simple = unique_filter(scene, index, rng)
    relational = _relational_program(scene, index, rng)
    if simple is not None and (relational is None or rng.random() < 0.5):
        return {"filter": simple}
    return relational


def _relational_program(scene: Scene, index: int, rng: np.random.Generator) -> dict | None:
    target = scene.objects[index]
    others = [int(i) for i in rng.permutation(len(scene.objects)) if i != index]
    for b in others:
        anchor = unique_filter(scene, b, rng)
        if anchor is None:
            continue
        for rel in [RELATIONS[int(k)] for k in rng.permutation(4)] + ["nearest"]:
            for form in (("shape",), ("colour",), (), ("colour", "shape")):
                program = {"filter": {k: getattr(target, k) for k in form}, "rel": rel, "anchor": anchor}
                if resolve(scene, program) == [index]:
                    return program
    return None


def program_text(program: dict, rng: np.random.Generator) -> str:
    head = noun_phrase(program["filter"], generic=pick(rng, ("object", "shape", "thing")))
    if "rel" not in program:
        return pick(rng, ("the {}", "{}", "the {} in the picture")).format(head)
    anchor = noun_phrase(program["anchor"])
    return f"the {head} {pick(rng, REL_PHRASES[program['rel']])} the {anchor}"


def tokenize(text: str) -> list[str]:
    return text.replace("?", " ?").replace(",", " ,").split()


__all__ = ["captions", "referring_program", "program_text", "noun_phrase", "tokenize"]
