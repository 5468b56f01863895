"""The tasks: pretraining, VQA, VCR, referring expressions, retrieval (and zero-shot retrieval).

Importing this package registers every task (`vilbert.tasks.registry`).
"""

from vilbert.tasks import pretrain, refer, retrieval, vcr, vqa  # noqa: F401  (registers the tasks)
from vilbert.tasks.builder import build_task, parse_options
from vilbert.tasks.common import RegionTextTask, TaskData
from vilbert.tasks.registry import Recipe, get_task, list_tasks, recipe, register_task

__all__ = ["Recipe", "RegionTextTask", "TaskData", "build_task", "get_task", "list_tasks", "parse_options",
           "recipe", "register_task"]
