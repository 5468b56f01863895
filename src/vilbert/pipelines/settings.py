"""A run's trainer settings: the task's recipe (its registered defaults), then what the caller sets."""

from __future__ import annotations

from typing import Any, Sequence

from vilbert.tasks import recipe
from vilbert.train import TrainConfig

RECIPE_FIELDS = ("lr", "batch_size", "epochs")  # what a task's recipe decides; TrainConfig the rest


def train_config_for(task: str, **settings: Any) -> TrainConfig:
    """TrainConfig with `task`'s recipe for lr, batch size and epochs, overridden by `settings`
    (TrainConfig fields; a None value keeps the default)."""
    r = recipe(task)
    values: dict[str, Any] = {name: getattr(r, name) for name in RECIPE_FIELDS}
    values.update({k: v for k, v in settings.items() if v is not None})
    return TrainConfig(**values)


def multitask_train_config(tasks: Sequence[str], **settings: Any) -> TrainConfig:
    """TrainConfig for several tasks trained together: lr the smallest of their recipes' (12-in-1's
    base rate; each task's loss is weighted by its own rate over it), epochs the largest,
    overridden by `settings` as in `train_config_for` (each task's batch size is its own)."""
    recipes = [recipe(t) for t in tasks]
    values: dict[str, Any] = {"lr": min(r.lr for r in recipes), "epochs": max(r.epochs for r in recipes),
                              "batch_size": max(r.batch_size for r in recipes)}
    values.update({k: v for k, v in settings.items() if v is not None})
    return TrainConfig(**values)
