"""The generic trainer: `train(model, task, TrainConfig(...), out_dir, resume=...)`.

`train` and `TrainResult` are imported lazily so that task modules may import this package
without a cycle through `vilbert.tasks`.
"""

from vilbert.train.config import TrainConfig

__all__ = ["TrainConfig", "TrainResult", "train", "unwrap_model"]


def __getattr__(name: str):
    if name in ("train", "TrainResult"):
        from vilbert.train import loop

        return getattr(loop, name)
    if name == "unwrap_model":
        from vilbert.train.distributed import unwrap_model

        return unwrap_model
    raise AttributeError(f"module 'vilbert.train' has no attribute {name!r}")
