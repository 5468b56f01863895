"""Visual Genome's 1600 object and 400 attribute names, in the detector's class order.

The files are `data/genome/1600-400-20/objects_vocab.txt` and `attributes_vocab.txt` of
peteanderson80/bottom-up-attention (MIT licence; commit 514e561b), identical to the copies in
py-bottom-up-attention's `demo/data/genome/1600-400-20/`. A line may list synonyms ("stop sign,stopsign");
class i is line i, background (index 1600 of `cls_prob`) and "no attribute" have no line.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def _read(name: str) -> tuple[str, ...]:
    text = resources.files("vilbert.detect.bottom_up").joinpath("vocab", name).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def objects_vocab(synonyms: bool = False) -> list[str]:
    """The 1600 object class names (first synonym of each line unless `synonyms`)."""
    lines = _read("objects_vocab.txt")
    return list(lines) if synonyms else [line.split(",")[0].strip() for line in lines]


def attributes_vocab(synonyms: bool = False) -> list[str]:
    """The 400 attribute names (first synonym of each line unless `synonyms`)."""
    lines = _read("attributes_vocab.txt")
    return list(lines) if synonyms else [line.split(",")[0].strip() for line in lines]
