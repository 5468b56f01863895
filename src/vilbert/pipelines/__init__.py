"""One function per pipeline, taking a typed run description: what `vilbert <command>` and the
demo both call (the CLI only turns arguments into these dataclasses).

    extract(FeaturesRun)     images -> a region feature store
    pretrain(PretrainRun)    masked multimodal modelling + alignment on caption pairs
    finetune(FinetuneRun)    one downstream task, from a saved model or a template
    multitask(MultitaskRun)  several downstream tasks at once in one model (12-in-1)
    evaluate(EvaluateRun)    a task's real metric on one split

`ModelSource` says where a run's model comes from (a saved directory, a preset, a config file).
Inference on images (answers, boxes, retrieval scores, attention) is `vilbert.inference`.
"""

from vilbert.pipelines.evaluate import EvaluateRun, evaluate
from vilbert.pipelines.features import FeaturesRun, extract
from vilbert.pipelines.finetune import FinetuneResult, FinetuneRun, finetune
from vilbert.pipelines.models import ModelSource
from vilbert.pipelines.multitask import MultitaskRun, TaskSpec, multitask
from vilbert.pipelines.pretrain import PretrainResult, PretrainRun, pretrain
from vilbert.pipelines.settings import train_config_for

__all__ = [
    "EvaluateRun", "FeaturesRun", "FinetuneResult", "FinetuneRun", "ModelSource", "MultitaskRun",
    "PretrainResult", "PretrainRun", "TaskSpec", "evaluate", "extract", "finetune", "multitask", "pretrain",
    "train_config_for",
]
