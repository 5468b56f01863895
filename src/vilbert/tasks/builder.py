"""Build any registered task from a dataset root, so every pipeline constructs tasks alike.

A root holds each dataset in its real layout, in the folder the generated world uses (the task's
recipe names it): ROOT/vqa, ROOT/vcr, ROOT/refcoco+, ROOT/flickr30k, ROOT/captions.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from vilbert.core.task import Task
from vilbert.tasks.common import TaskData
from vilbert.tasks.registry import get_task, recipe

FEATURES_NAME = "features.lmdb"  # a data root's feature store, unless one is named
_DATA_FIELDS = {f.name for f in fields(TaskData)} - {"data_dir", "features"}


def build_task(name: str, data_root: str | Path, features: str | Path | None = None, **options: Any) -> Task:
    """Task `name` over ROOT/<its folder> and the feature store (default ROOT/FEATURES_NAME).

    `options` set TaskData fields (max_text_length, max_regions, vocab) or the task's own
    constructor arguments (e.g. VQA's min_answer_count); an unknown option names the valid ones.
    """
    cls = get_task(name)
    root = Path(data_root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist")
    data_kwargs = {k: options.pop(k) for k in list(options) if k in _DATA_FIELDS}
    data_kwargs.setdefault("max_text_length", recipe(name).max_text_length)
    data = TaskData(
        data_dir=str(root / recipe(name).folder),
        features=str(features if features is not None else root / FEATURES_NAME),
        **data_kwargs,
    )
    accepted = _constructor_options(cls)
    unknown = sorted(set(options) - accepted) if accepted is not None else []
    if unknown:
        raise ValueError(f"task {name!r} has no option(s) {unknown}; its options: "
                        f"{', '.join(sorted(accepted | _DATA_FIELDS))}")
    return cls(data, **options)


def _constructor_options(cls: type) -> set[str] | None:
    """Keyword arguments `cls(data, ...)` takes besides `data` (None if it takes **kwargs)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, data
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """`["key=value", ...]` -> dict; values are read as JSON when they parse ("3", "true", "[1]")."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {pair!r} is not key=value")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out
