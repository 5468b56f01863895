"""A run's trainer settings: the task's recipe (its registered defaults), then what the caller sets."""

from __future__ import annotations

from typing import Any

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
