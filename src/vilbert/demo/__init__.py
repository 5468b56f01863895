"""`vilbert demo`: the paper's experiment end to end on the generated world, as resumable stages."""

from vilbert.demo.plan import DemoSizes, build_plan, default_sizes, quick_sizes
from vilbert.demo.stages import Stage, StageError, StageRunner

__all__ = ["DemoSizes", "Stage", "StageError", "StageRunner", "build_plan", "default_sizes", "quick_sizes"]
