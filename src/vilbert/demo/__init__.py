"""`vilbert demo`: the paper's experiment end to end on the generated world, as resumable stages.

sizes.py (what the runs cost and why), rows.py (the models each table compares), plan.py (the
stages and tables), steps.py (each stage: one pipeline call), stages.py (the resumable runner),
run.py (run the plan, write the tables), results.py (tables, plots, the paper's claims).
"""

from vilbert.demo.plan import DemoPlan, StageKey, build_plan
from vilbert.demo.run import run_demo
from vilbert.demo.sizes import DemoSizes, default_sizes, quick_sizes
from vilbert.demo.stages import Stage, StageError, StageRunner

__all__ = ["DemoPlan", "DemoSizes", "Stage", "StageError", "StageKey", "StageRunner", "build_plan", "default_sizes",
           "quick_sizes", "run_demo"]
