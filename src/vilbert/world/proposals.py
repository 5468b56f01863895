"""Region proposals for a scene: the true boxes, jittered copies and background boxes (10-36)."""

from __future__ import annotations

import numpy as np

from vilbert.world.scene import Scene

MIN_PROPOSALS, MAX_PROPOSALS = 10, 36


def _clip(box: np.ndarray, size: int) -> np.ndarray:
    x1, y1, x2, y2 = np.clip(box, 0, size)
    # Keep every box at least 4 px wide and tall inside the image.
    x2, y2 = max(x2, min(x1 + 4, size)), max(y2, min(y1 + 4, size))
    x1, y1 = min(x1, x2 - 4), min(y1, y2 - 4)
    return np.array([x1, y1, x2, y2])


def proposals(scene: Scene, rng: np.random.Generator, max_proposals: int = MAX_PROPOSALS) -> list[list[float]]:
    """[[x1, y1, x2, y2, score], ...] sorted by score, 10-`max_proposals` rows, true boxes always included.

    Scores overlap between kinds, so a box's rank does not say whether it is an object.
    """
    size = scene.width
    true = [np.array(o.box, dtype=np.float64) for o in scene.objects]
    total = int(rng.integers(max(MIN_PROPOSALS, 3 * len(true)), max_proposals + 1))
    n_jitter = (total - len(true)) * 2 // 3
    rows = [(box, float(rng.uniform(0.6, 1.0))) for box in true]
    for k in range(n_jitter):
        box = true[k % len(true)]
        w, h = box[2] - box[0], box[3] - box[1]
        cx = (box[0] + box[2]) / 2 + rng.normal(0, 0.2) * w
        cy = (box[1] + box[3]) / 2 + rng.normal(0, 0.2) * h
        w, h = w * rng.uniform(0.6, 1.5), h * rng.uniform(0.6, 1.5)
        rows.append((_clip(np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]), size),
                     float(rng.uniform(0.3, 0.95))))
    while len(rows) < total:
        w, h = rng.uniform(0.1, 0.6, size=2) * size
        x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
        rows.append((_clip(np.array([x, y, x + w, y + h]), size), float(rng.uniform(0.01, 0.6))))
    rows.sort(key=lambda r: -r[1])
    return [[round(float(v), 2) for v in box] + [round(score, 4)] for box, score in rows]
