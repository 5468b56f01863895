"""The generic trainer: `train(model, task, TrainConfig(...), out_dir, resume=...)`.

It knows only the `vilbert.core.task.Task` interface, never a task by name.
"""

from vilbert.train.config import TrainConfig
from vilbert.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
