"""Pretraining as one function: `pretrain(PretrainRun(...))`, which `vilbert pretrain` and the demo call.

Masked words, masked regions and alignment on (caption, image) pairs (`vilbert.tasks.pretrain`);
the weights the text stream starts from (BERT, or the shipped MiniLM) train at `text_lr_scale`
of the rate, as the original does. Writes OUT/checkpoints/ (atomic; `resume` continues exactly),
train_log.csv, eval_log.csv, tensorboard/, curves.png, pretrain_run.json (the run, the model
config and the trainer settings) and, once the run is complete, OUT/model for fine-tuning.
Under torchrun every process calls it; rank 0 writes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vilbert.core.runtime import resolve_device
from vilbert.features.store import FeatureStore
from vilbert.io.atomic import DamagedFileError, read_json, write_json
from vilbert.model import ViLBertConfig, save_pretrained
from vilbert.pipelines.logs import Log, stderr_log
from vilbert.pipelines.models import ModelSource, fit_to_store, new_model, resolve_text_init, text_stream_lr_scales
from vilbert.pipelines.settings import train_config_for
from vilbert.tasks import TaskData
from vilbert.tasks.builder import FEATURES_NAME
from vilbert.tasks.pretrain import RECIPE, PretrainTask
from vilbert.train import TrainConfig, TrainResult, train
from vilbert.train import distributed as D
from vilbert.train.logging import EVAL_CSV, TRAIN_CSV, last_row

RUN_FILE = "pretrain_run.json"
MODEL_DIR = "model"


@dataclass
class PretrainRun:
    """Everything a pretraining run is; the defaults are the paper's recipe at batch 32."""

    data: str | Path  # a world root (holding captions/) or a folder of {split}.tsv caption pairs
    out: str | Path
    features: str | Path | None = None  # default DATA/features.lmdb
    model: ModelSource = field(default_factory=lambda: ModelSource(preset="small"))
    text_lr_scale: float = 0.1  # the original pretrains the BERT-initialised weights at a tenth of the rate
    alignment_weight: float = 1.0  # 1 = the paper's equal weights (see PretrainTask)
    contrastive_weight: float = 0.0  # the dual-encoder loss (retrieval's first stage); 0 = the paper's three losses
    max_text_length: int = RECIPE.max_text_length
    max_regions: int = TaskData.max_regions
    train: TrainConfig = field(default_factory=lambda: train_config_for("pretrain"))
    resume: bool = False

    @property
    def features_path(self) -> Path:
        return Path(self.features) if self.features is not None else Path(self.data) / FEATURES_NAME

    def record(self) -> dict[str, Any]:
        """The run as JSON-able values (paths as strings)."""
        values = asdict(self)
        values.pop("train")
        return json.loads(json.dumps(values, default=str))


@dataclass
class PretrainResult:
    train: TrainResult
    model_dir: Path | None  # OUT/model when the run finished, else None
    last_train: dict[str, str]  # the last row of train_log.csv
    last_eval: dict[str, str]  # the last row of eval_log.csv ({} without a val split)
    main_process: bool  # rank 0 (or the only process): the one that wrote and reports


def pretraining_config(source: ModelSource, store: FeatureStore, log: Log) -> ViLBertConfig:
    """The template fitted to the store, with the three pretraining heads; the store must carry the
    detector's class distribution per region (the masked-region target)."""
    if source.saved:
        raise ValueError(f"pretraining builds its model from a preset or config file, not {source.describe()}")
    classes = int(store.meta.get("num_classes") or 0)
    if classes <= 0:
        raise ValueError(f"feature store {store.path} has no cls_prob (num_classes={store.meta.get('num_classes')!r}); "
                         "pretraining needs the detector's class distribution per region")
    config = fit_to_store(source.template(), store.meta, store.path, source.describe(), log)
    heads = dict(config.heads)
    region = dict(heads.get("masked_region", {}))
    region.pop("num_classes", None)  # the head follows v_target_size
    heads.update({"masked_word": heads.get("masked_word", {}), "masked_region": region,
                  "alignment": heads.get("alignment", {})})
    config.heads = heads
    config.validate()
    return config


def _check_run_file(out: Path, record: dict[str, Any], resume: bool) -> None:
    """On resume the model must be the one the run started with (its checkpoint holds it)."""
    path = out / RUN_FILE
    if resume and path.is_file():
        before = read_json(path, "the run's settings")
        if not isinstance(before, dict) or not isinstance(before.get("model"), dict):
            raise DamagedFileError(f"{path} (the run's settings) holds no model config; delete it to resume anyway")
        before = before["model"]
        changed = sorted(k for k in set(before) | set(record["model"]) if before.get(k) != record["model"].get(k))
        if changed:
            raise ValueError(f"cannot resume {out}: the model config differs from the run's ({', '.join(changed)}); "
                             f"see {path}")


def pretrain(run: PretrainRun, log: Log = stderr_log("vilbert pretrain")) -> PretrainResult:
    """Run (or resume) the pretraining described by `run`; see the module docstring."""
    out = Path(run.out)
    features = run.features_path
    if not (features / "data.mdb").is_file():
        raise FileNotFoundError(f"no feature store at {features} (make one with `vilbert features`)")
    created = D.init_distributed(resolve_device(run.train.device))  # ours: the group outlives train()
    try:
        main_rank = D.is_main()
        say = log if main_rank else (lambda message: None)
        store = FeatureStore(features)
        config = pretraining_config(run.model, store, say)
        task = PretrainTask(
            TaskData(str(run.data), str(features), max_text_length=run.max_text_length, max_regions=run.max_regions),
            data_fraction=run.train.data_fraction, alignment_weight=run.alignment_weight,
            contrastive_weight=run.contrastive_weight,
        )
        text_init = resolve_text_init(run.model.text_init, config)
        model = new_model(config, text_init, run.train.seed, say)  # the same initial weights in every process
        # Only weights that start from BERT get their own rate; a stream from scratch trains at one rate.
        scales = text_stream_lr_scales(model, run.text_lr_scale) if text_init is not None else {}
        train_config = replace(run.train, lr_scales=scales)
        record = {"run": run.record(), "model": config.to_dict(), "train": train_config.to_dict()}
        _check_run_file(out, record, run.resume)
        if main_rank:
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / RUN_FILE, record)
        eval_splits = ("val",) if task.has_split("val") else ()
        result = train(model, task, train_config, out, resume=run.resume, eval_splits=eval_splits)
        if result.finished and main_rank:
            save_pretrained(model, out / MODEL_DIR)
        D.barrier()
        return PretrainResult(result, out / MODEL_DIR if result.finished else None,
                              last_row(out / TRAIN_CSV), last_row(out / EVAL_CSV), main_rank)
    finally:
        if created:
            D.cleanup_distributed()
