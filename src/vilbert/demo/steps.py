"""The demo's stages, each a thin call of one pipeline with the demo's sizes.

Layout under OUT: world/, features.lmdb, runs/pretrain/<model>/ (a pretraining run, its model in
model/), runs/<row>/<task>/ (a fine-tuning run: model/, metrics.json, logs and curves),
runs/<row>/all/ (a multi-task row's one run over every task).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vilbert.demo.rows import ModelSpec, Row
from vilbert.demo.sizes import POOLERS, TASKS, DemoSizes
from vilbert.features.extract import ExtractConfig
from vilbert.io.atomic import write_json
from vilbert.pipelines import (
    EvaluateRun,
    FeaturesRun,
    FinetuneRun,
    ModelSource,
    MultitaskRun,
    PretrainRun,
    TaskSpec,
    evaluate,
    extract,
    finetune,
    multitask,
    pretrain,
    train_config_for,
)
from vilbert.pipelines.settings import multitask_train_config
from vilbert.tasks.mixing import TaskMix
from vilbert.tasks.multitask import metrics_by_task
from vilbert.world import generate_world

ZERO_SHOT = "zero_shot_retrieval"
EXTRACT_BATCH = 16  # images per backbone batch


def _log(message: str) -> None:
    print(message, flush=True)  # into the stage's log


def link_demo_parts(demo: Path, out: Path, names: tuple[str, ...] | list[str]) -> None:
    """OUT/<name> points to DEMO/<name> for each name (a finished demo's world, features or runs,
    read by experiments beside it and never written)."""
    for name in names:
        source, target = Path(demo) / name, Path(out) / name
        if not source.exists():
            raise FileNotFoundError(f"{source} is missing: --demo must be a finished `vilbert demo` folder")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source.resolve())


@dataclass(frozen=True)
class Steps:
    """The stage bodies for one demo folder `out` and its sizes."""

    out: Path
    sizes: DemoSizes

    @property
    def world(self) -> Path:
        return self.out / "world"

    @property
    def features(self) -> Path:
        return self.out / "features.lmdb"

    @property
    def pretrain_seeds(self) -> int:
        """How many pretrainings each pretrained model gets: one, or one per seed."""
        return self.sizes.seeds if self.sizes.vary_pretraining else 1

    def pretrain_seed(self, row: Row, seed: int) -> int:
        """The pretraining that seed `seed` of `row` starts from (its index)."""
        return seed if row.pretrained and self.sizes.vary_pretraining else 0

    def pretrain_dir(self, spec: ModelSpec, seed: int = 0) -> Path:
        return self.out / "runs" / "pretrain" / (spec.name if seed == 0 else f"{spec.name}-seed{seed}")

    def run_dir(self, row: Row, task: str, seed: int = 0) -> Path:
        return self.out / "runs" / row.key / (task if seed == 0 else f"{task}-seed{seed}")

    def multitask_dir(self, row: Row, seed: int = 0) -> Path:
        return self.out / "runs" / row.key / ("all" if seed == 0 else f"all-seed{seed}")

    def template(self, spec: ModelSpec) -> ModelSource:
        """A model of the demo's preset with the spec's overrides, text stream from MiniLM."""
        return ModelSource(preset=self.sizes.preset, overrides=dict(spec.overrides),
                           text_init="minilm" if self.sizes.text_init else "none")

    def row_model(self, row: Row, seed: int = 0) -> ModelSource:
        """Seed `seed`'s starting point for the row: its pretrained model, or a fresh one."""
        if row.pretrained:
            return ModelSource(directory=self.pretrain_dir(row.model, self.pretrain_seed(row, seed)) / "model")
        return self.template(row.model)

    def task_options(self, task: str) -> dict[str, Any]:
        options: dict[str, Any] = {"max_regions": self.sizes.max_regions}
        if task in ("retrieval", ZERO_SHOT):
            options["eval_images"] = self.sizes.retrieval_eval_images
        return options

    # -- the stages -------------------------------------------------------------------------------

    def make_world(self) -> dict[str, Any]:
        s = self.sizes
        path = generate_world(self.world, num_images=s.images, seed=s.seed, image_size=s.image_size,
                              train_fraction=s.train_fraction, val_fraction=s.val_fraction,
                              extra_test_images=s.extra_test_images,
                              max_objects=s.max_objects, max_proposals=s.max_proposals,
                              captions_per_image=s.captions_per_image, vcr_per_image=s.vcr_per_image)
        splits = json.loads(Path(path).read_text())["splits"]
        return {"world": str(path), "images": {k: len(v) for k, v in splits.items()}}

    def extract_features(self) -> dict[str, Any]:
        report = extract(FeaturesRun(images=self.world / "images", out=self.features,
                                     boxes=self.world / "proposals.json",
                                     config=ExtractConfig(image_size=self.sizes.image_size, batch_size=EXTRACT_BATCH,
                                                          colour_features=self.sizes.colour_features)))
        if report.failed:
            raise RuntimeError(f"{report.failed} images failed; see {self.features}/failures.jsonl")
        return {"written": report.written, "skipped": report.skipped}

    def pretrain(self, spec: ModelSpec, seed: int = 0) -> dict[str, Any]:
        """Pretrain at the demo's seed + `seed` (the visual stream's initial weights, the masks and
        the order of the pairs all follow it)."""
        s = self.sizes
        run = PretrainRun(
            data=self.world, out=self.pretrain_dir(spec, seed), features=self.features, model=self.template(spec),
            text_lr_scale=s.pretrain_text_lr_scale, alignment_weight=s.alignment_weight, max_regions=s.max_regions,
            train=train_config_for("pretrain", max_steps=s.pretrain_steps, batch_size=s.pretrain_batch,
                                   lr=s.pretrain_lr, data_fraction=spec.data_fraction, seed=s.seed + seed),
            resume=True,
        )
        _log(f"pretrain {json.dumps(run.record())}")
        result = pretrain(run, log=_log)
        if result.model_dir is None:
            raise RuntimeError(f"pretraining {spec.name} finished without a model in {run.out}")
        return {"model": str(result.model_dir), "val": result.last_eval}

    def finetune(self, row: Row, task: str, seed: int = 0) -> dict[str, Any]:
        """Fine-tune and evaluate at the demo's seed + `seed` (the fresh heads, the order of the
        examples and the unpretrained row's initial weights all follow it)."""
        s, ft = self.sizes, self.sizes.finetune[task]
        result = finetune(FinetuneRun(
            task=task, data=self.world, out=self.run_dir(row, task, seed), model=self.row_model(row, seed),
            features=self.features, options=self.task_options(task), reinit=ft.reinit,
            text_lr_scale=s.finetune_text_lr_scale if s.text_init else 1.0,
            train=train_config_for(task, lr=ft.lr, max_steps=ft.steps, batch_size=ft.batch_size, seed=s.seed + seed),
            eval_splits=(s.eval_split,), keep_checkpoints=False, resume=True,
        ), log=_log)
        return {"split": s.eval_split, "metrics": result.metrics[s.eval_split], "model": result.metrics["model"]}

    def zero_shot(self, row: Row, seed: int = 0) -> dict[str, Any]:
        """Retrieval scored by the pretrained alignment head, with no fine-tuning (of the
        pretraining at seed + `seed` when pretraining is varied)."""
        s = self.sizes
        result = evaluate(EvaluateRun(task=ZERO_SHOT, data=self.world, model=self.row_model(row, seed), split=s.eval_split,
                                      features=self.features, options=self.task_options(ZERO_SHOT), seed=s.seed),
                          log=_log)
        write_json(self.run_dir(row, ZERO_SHOT, seed) / "metrics.json", result)
        return {"split": s.eval_split, "metrics": result["metrics"]}

    def multitask_run(self, row: Row, seed: int = 0, out: Path | None = None, sampler: str = "shares",
                      task_tokens: bool = False, reinit_poolers: bool = False, val_every: int = 0) -> MultitaskRun:
        """One model fine-tuned on every task at once, for as many steps as the single-task
        fine-tunes together: each step one task's batch at that task's single-task batch size, the
        text stream at the same scale, each task's loss weighted by its rate over the smallest (as
        12-in-1's loss_scale). `sampler` "shares": each task gets its single-task number of steps,
        interleaved; "round_robin": 12-in-1's cycle, the same number for every task."""
        s = self.sizes
        base = min(s.finetune[t].lr for t in TASKS)
        specs = tuple(TaskSpec(t, batch_size=s.finetune[t].batch_size, loss_weight=s.finetune[t].lr / base,
                               options=self.task_options(t)) for t in TASKS)
        mix = TaskMix("shares", shares={t: s.finetune[t].steps for t in TASKS}) if sampler == "shares" else TaskMix(sampler)
        total = sum(s.finetune[t].steps for t in TASKS)
        return MultitaskRun(
            tasks=specs, data=self.world, out=out or self.multitask_dir(row, seed), model=self.row_model(row, seed),
            features=self.features, mix=mix, task_tokens=task_tokens, reinit=POOLERS if reinit_poolers else (),
            text_lr_scale=s.finetune_text_lr_scale if s.text_init else 1.0,
            train=multitask_train_config(TASKS, lr=base, max_steps=total, seed=s.seed + seed,
                                         eval_every=val_every or None),
            eval_splits=("val", s.eval_split) if val_every else (s.eval_split,), keep_checkpoints=False, resume=True,
        )

    def multitask(self, run: MultitaskRun) -> dict[str, Any]:
        """Train and evaluate a multi-task run; its metrics on the evaluation split per task."""
        result = multitask(run, log=_log)
        split = self.sizes.eval_split
        return {"split": split, "metrics": metrics_by_task(result.metrics[split], TASKS),
                "steps_per_task": result.metrics["steps_per_task"]}
