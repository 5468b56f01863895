"""Scenes of the generated world: objects with shape, colour, size and position, and their relations.

A scene is plain data (JSON round trip), sampled from a numpy Generator so that one
(seed, image_id) pair always gives the same scene. Everything the annotations say about a scene
is computed here from positions and attributes, so a test can re-check any answer against it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

# Saturated, well separated colours: backgrounds are kept muted so the objects stand out.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 160, 55),
    "blue": (35, 75, 215),
    "yellow": (240, 215, 35),
    "purple": (135, 50, 185),
    "orange": (245, 135, 25),
    "cyan": (35, 205, 215),
    "white": (248, 248, 248),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross")
SIZES: dict[str, float] = {"small": 0.085, "large": 0.14}  # radius as a fraction of the image side
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
OPPOSITE: dict[str, str] = {"left": "right", "right": "left", "above": "below", "below": "above"}

# A relation holds only when the centres differ by more than this fraction of the image side;
# closer pairs are "ambiguous" and never used to state a relation.
RELATION_MARGIN = 0.06
# "nearest" holds only when the nearest candidate is clearly nearer than the runner-up.
NEAREST_RATIO = 0.8


@dataclass
class WorldObject:
    """One object: attributes, centre (pixels), radius (pixels), rotation and tight box x1y1x2y2."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    radius: float
    angle: float
    box: list[float] = field(default_factory=list)


@dataclass
class Scene:
    image_id: int
    width: int
    height: int
    objects: list[WorldObject]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Scene":
        objects = [WorldObject(**o) for o in data["objects"]]
        return cls(data["image_id"], data["width"], data["height"], objects)


def shape_vertices(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Polygon of a shape (a circle is approximated by 32 points, for boxes only)."""
    if shape == "circle":
        ang = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        radii = np.full(32, r)
    elif shape == "square":
        ang = np.deg2rad(np.array([45, 135, 225, 315]) + angle)
        radii = np.full(4, r * 1.2)
    elif shape == "diamond":
        # Taller than wide, so a slightly rotated square never looks like it.
        ang = np.deg2rad(np.array([0, 90, 180, 270]) + angle)
        radii = np.array([r * 0.7, r * 1.15, r * 0.7, r * 1.15])
    elif shape == "triangle":
        ang = np.deg2rad(np.array([-90, 30, 150]) + angle)
        radii = np.full(3, r * 1.15)
    elif shape == "star":
        ang = np.deg2rad(np.arange(10) * 36 - 90 + angle)
        radii = np.where(np.arange(10) % 2 == 0, r * 1.15, r * 0.48)
    elif shape == "cross":
        a, b = r * 1.05, r * 0.36
        pts = np.array([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b),
                        (-a, b), (-a, -b), (-b, -b)])
        t = math.radians(angle)
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        pts = pts @ rot.T
        return [(cx + float(x), cy + float(y)) for x, y in pts]
    else:
        raise ValueError(f"unknown shape {shape!r}; valid shapes: {', '.join(SHAPES)}")
    return [(cx + float(rr * math.cos(t)), cy + float(rr * math.sin(t))) for rr, t in zip(radii, ang)]


def _tight_box(shape: str, cx: float, cy: float, r: float, angle: float, w: int, h: int) -> list[float]:
    pts = np.array(shape_vertices(shape, cx, cy, r, angle))
    x1, y1 = np.clip(pts.min(0), 0, [w, h])
    x2, y2 = np.clip(pts.max(0), 0, [w, h])
    return [round(float(x1), 2), round(float(y1), 2), round(float(x2), 2), round(float(y2), 2)]


def sample_scene(rng: np.random.Generator, image_id: int, size: int, min_objects: int = 2,
                 max_objects: int = 6) -> Scene:
    """Sample 2-6 objects; attributes come from small per-scene pools so repeats (and counts) occur."""
    n = int(rng.integers(min_objects, max_objects + 1))
    shape_pool = rng.choice(len(SHAPES), size=int(rng.integers(2, 5)), replace=False)
    colour_names = list(COLOURS)
    colour_pool = rng.choice(len(colour_names), size=int(rng.integers(2, 5)), replace=False)
    objects: list[WorldObject] = []
    for _ in range(n):
        shape = SHAPES[int(rng.choice(shape_pool))]
        colour = colour_names[int(rng.choice(colour_pool))]
        size_name = "small" if rng.random() < 0.5 else "large"
        r = SIZES[size_name] * size * float(rng.uniform(0.9, 1.1))
        angle = float(rng.uniform(-15, 15))
        for _try in range(40):
            lo, hi = r * 1.2 + 1, size - r * 1.2 - 1
            cx, cy = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
            # Centres at least 0.85 * (r_i + r_j) apart: overlap (occlusion) happens, hiding does not.
            if all(math.hypot(cx - o.cx, cy - o.cy) >= 0.85 * (r + o.radius) for o in objects):
                box = _tight_box(shape, cx, cy, r, angle, size, size)
                objects.append(WorldObject(shape, colour, size_name, round(cx, 2), round(cy, 2),
                                           round(r, 2), round(angle, 2), box))
                break
    if len(objects) < min_objects:  # pragma: no cover - 40 tries on an empty-ish canvas never fail
        raise RuntimeError(f"image {image_id}: could not place {min_objects} objects")
    return Scene(image_id, size, size, objects)


# ---------------------------------------------------------------------------- relations and filters


def relation(scene: Scene, a: int, b: int, rel: str, strict: bool = True) -> bool:
    """Does object `a` stand `rel` (left/right/above/below) of object `b`?

    strict=True asks for a clear margin; strict=False counts any difference (used to find
    ambiguous candidates that would make an expression name more than one object).
    """
    oa, ob = scene.objects[a], scene.objects[b]
    margin = RELATION_MARGIN * scene.width if strict else 0.0
    if rel == "left":
        return oa.cx < ob.cx - margin
    if rel == "right":
        return oa.cx > ob.cx + margin
    if rel == "above":
        return oa.cy < ob.cy - margin
    if rel == "below":
        return oa.cy > ob.cy + margin
    raise ValueError(f"unknown relation {rel!r}; valid: {', '.join(RELATIONS)}")


def matches(obj: WorldObject, filt: dict) -> bool:
    """Does `obj` agree with every attribute named in `filt` (keys shape/colour/size)?"""
    for key, value in filt.items():  # a plain loop: this is the generator's innermost call
        if getattr(obj, key) != value:
            return False
    return True


def select(scene: Scene, filt: dict) -> list[int]:
    return [i for i, o in enumerate(scene.objects) if matches(o, filt)]


def resolve(scene: Scene, program: dict) -> list[int]:
    """Objects named by a referring program.

    program = {"filter": {...}} or {"filter": {...}, "rel": r, "anchor": {...}} with r a relation or
    "nearest". The anchor must itself name exactly one object. A relational program counts loose
    (margin-free) candidates too, so an object in the ambiguous band makes the answer non-unique.
    """
    cands = select(scene, program["filter"])
    if "rel" not in program:
        return cands
    anchors = select(scene, program["anchor"])
    if len(anchors) != 1:
        return []
    anchor = anchors[0]
    cands = [i for i in cands if i != anchor]
    rel = program["rel"]
    if rel == "nearest":
        if not cands:
            return []
        ao = scene.objects[anchor]
        dist = sorted((math.hypot(scene.objects[i].cx - ao.cx, scene.objects[i].cy - ao.cy), i) for i in cands)
        if len(dist) > 1 and dist[0][0] > NEAREST_RATIO * dist[1][0]:
            return [d[1] for d in dist]  # no clear nearest: every candidate is named
        return [dist[0][1]]
    strict = [i for i in cands if relation(scene, i, anchor, rel, strict=True)]
    loose = [i for i in cands if relation(scene, i, anchor, rel, strict=False)]
    return strict if strict == loose else loose


FILTER_FORMS: tuple[tuple[str, ...], ...] = (
    ("shape",), ("colour",), ("colour", "shape"), ("size", "shape"), ("size", "colour"),
    ("size", "colour", "shape"),
)


def unique_filter(scene: Scene, index: int, rng: np.random.Generator,
                  exclude: tuple[str, ...] = ()) -> dict | None:
    """A shortest attribute filter naming object `index` alone (random among equally short ones)."""
    obj = scene.objects[index]
    forms = [f for f in FILTER_FORMS if not set(f) & set(exclude)]
    by_len: dict[int, list[tuple[str, ...]]] = {}
    for form in forms:
        by_len.setdefault(len(form), []).append(form)
    for length in sorted(by_len):
        options = by_len[length]
        for k in rng.permutation(len(options)):
            filt = {key: getattr(obj, key) for key in options[int(k)]}
            if select(scene, filt) == [index]:
                return filt
    return None
