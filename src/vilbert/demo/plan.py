"""The demo's plan: the paper's Table 1 experiment on the generated world, as resumable stages.

    world -> features -> pretrain ViLBERT, pretrain the single-stream baseline
          -> for each row (single-stream pretrained, ViLBERT without pretraining, ViLBERT
             pretrained): fine-tune and evaluate VQA, VCR, referring expressions, retrieval;
             zero-shot retrieval with the alignment head
          -> OUT/results.{md,json,png}

Every row uses the same sizes, steps, batch sizes and learning rates; only the model differs.
Layout under OUT: world/, features.lmdb, configs/<model>.json, runs/pretrain/<model>/ (the
`vilbert pretrain` run, final weights in model/), runs/<row>/<task>/ (the fine-tuned model/,
metrics.json, the trainer's logs and curves), stages/ (markers), logs/ (one log per stage).

The ablations (`--ablations`) reuse the world and features: the depth of co-attention (2, 4, 6
layers; pretrained and fine-tuned like the main ViLBERT row) and the share of pretraining data
(0, 25, 50, 100%; the same number of pretraining steps over a smaller nested share of pairs).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vilbert.demo.stages import Stage
from vilbert.io.atomic import write_json

TASKS = ("vqa", "vcr", "refer", "retrieval")
POOLERS = ("text_pooler", "image_pooler")
ZERO_SHOT = "zero_shot_retrieval"


@dataclass(frozen=True)
class FinetuneSizes:
    steps: int
    batch_size: int
    lr: float
    reinit: tuple[str, ...] = ()  # modules started afresh before fine-tuning (every row alike)


@dataclass(frozen=True)
class DemoSizes:
    """Everything that sets the demo's cost; the same for every row of a table."""

    # The world and sizes are set for a model trained for minutes on 2 CPU cores (see README):
    # 2-4 objects, at most 14 proposals, 10 captions per image, features at 384 px (at 224 px a
    # linear probe reads an object's colour from its region feature only 60% of the time, at
    # 384 px 71%). A fifth of the images are test images, so that each task's test set has ~100
    # (VCR) to ~1,000 (VQA, referring expressions) items; retrieval scores the first 40 test
    # images against their 200 captions.
    images: int = 800
    train_fraction: float = 0.75
    val_fraction: float = 0.05  # test gets the rest: 160 images
    image_size: int = 384  # world images and the feature extractor's canvas
    max_objects: int = 4
    max_proposals: int = 14
    captions_per_image: int = 10
    # Two VCR items per image (as the scene allows): ~200 test items instead of ~100, whose
    # accuracies moved by 5-10 points between runs that differed only in unrelated annotations.
    vcr_per_image: int = 2
    retrieval_eval_images: int | None = 40
    # The text stream is MiniLM-L6 (the paper starts from BERT); see the demo preset.
    preset: str = "demo"
    text_init: bool = True
    max_regions: int = 14
    # 180 steps pay for the wider visual stream (see the demo preset) within the 20 minutes.
    pretrain_steps: int = 180
    pretrain_batch: int = 64
    # 5x the paper's 1e-4: with the earlier 128-wide visual stream, 220 steps at 5e-4 reached 63%
    # masked-word and 69% alignment accuracy on validation, against 46% and 65% at 1e-4.
    pretrain_lr: float = 5e-4
    bert_lr_scale: float = 0.1  # as the original: the BERT-initialised weights at a tenth of the rate
    # The paper weighs the three losses equally. At initialisation the alignment loss's gradient
    # into the shared layers is ~1000x smaller than the masked-word loss's (measured), so within
    # 200 steps the alignment head never leaves chance at weight 1; at 100 it does.
    alignment_weight: float = 100.0
    # VCR and retrieval items are 4 (text, image) rows each, so their batches hold 4x the rows.
    # VQA starts its two poolers afresh (every row alike; a no-op in kind for the unpretrained
    # row). Pretraining trains them only through the alignment head, so on VQA's question-image
    # pairs, all of them matched, the pooled product presumably says little beyond "matched"; a
    # 0.6-epoch fine-tune does not retrain them: with the pretrained poolers ViLBERT scored 39.1
    # against an answer prior of 39.0 and 40.1 unpretrained; afresh 45.3 (fine-tuning seeds 0-3:
    # 45.3, 45.7, 42.7, 42.5; unpretrained 40.0, 40.9, 43.8, 37.4). Re-initialising the pooler
    # for short fine-tunes follows Zhang et al., "Revisiting Few-sample BERT Fine-tuning" (ICLR
    # 2021). It is VQA's alone: VCR, which scores how well each answer matches the image, as
    # alignment does, fell from 50.0 / 50.0 / 22.6 to 39.6 / 41.5 / 14.6 with fresh poolers (one
    # probe of retrieval rose instead, R@1 9.5 -> 14.5, and was left as it is: see the README).
    finetune: dict[str, FinetuneSizes] = field(default_factory=lambda: {
        "vqa": FinetuneSizes(80, 32, 5e-4, reinit=POOLERS),
        "vcr": FinetuneSizes(50, 8, 5e-4),
        "refer": FinetuneSizes(80, 32, 5e-4),
        "retrieval": FinetuneSizes(50, 8, 5e-4),
    })
    # Fine-tuning too gives the BERT-initialised weights a tenth of the rate: the new heads, the
    # visual stream and co-attention need a high rate to learn in ~100 steps, and at that rate
    # for every weight the text stream collapses to the answer priors (measured on VQA/RefCOCO+).
    finetune_bert_lr_scale: float = 0.1
    eval_split: str = "test"
    seed: int = 0
    # Seconds per unit, for the time-left display (measured on 2 CPU cores, rounded up; a demo
    # folder may be resumed with other values).
    seconds_per_image_world: float = 0.015
    seconds_per_image_features: float = 0.08
    seconds_per_pretrain_row: float = 0.018
    seconds_per_finetune_row: float = 0.019  # with its evaluation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_sizes() -> DemoSizes:
    return DemoSizes()


def quick_sizes() -> DemoSizes:
    """A tiny world and a tiny model: the whole pipeline in a few minutes (CI smoke test)."""
    return DemoSizes(
        images=48, train_fraction=0.7, val_fraction=0.1, image_size=224, preset="tiny", text_init=False, max_regions=36,
        retrieval_eval_images=None,
        pretrain_steps=20, pretrain_batch=16, pretrain_lr=1e-3,
        finetune={t: FinetuneSizes(10, 8, 1e-3, reinit=POOLERS if t == "vqa" else ()) for t in TASKS},
        seconds_per_pretrain_row=0.002, seconds_per_finetune_row=0.002,
    )


# ------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelSpec:
    """A model to pretrain (or not): its name under OUT/configs and runs/pretrain, and its config."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)  # on top of the preset
    pretrain: bool = True
    data_fraction: float = 1.0


@dataclass(frozen=True)
class Row:
    """One row of a results table: a model, fine-tuned on every task."""

    key: str  # folder under OUT/runs
    label: str  # as printed in the table
    model: ModelSpec
    pretrained: bool


def coattention_depth(depth: int, text_layers: int) -> dict[str, Any]:
    """Config overrides for `depth` co-attention layers: one before each of the last `depth` text
    layers (as the paper's model does in BERT's upper half) and one before each of `depth` visual
    layers (the visual stream gets `depth` layers, as in the original's ablation configs)."""
    if not 1 <= depth <= text_layers:
        raise ValueError(f"co-attention depth {depth} must be in [1, {text_layers}] (the text layers)")
    return {
        "v_num_hidden_layers": depth,
        "coattention_before_text_layer": list(range(text_layers - depth, text_layers)),
        "coattention_before_visual_layer": list(range(depth)),
    }


VILBERT = ModelSpec("vilbert")
SINGLE = ModelSpec("single_stream", {"architecture": "single_stream"})
SCRATCH = ModelSpec("vilbert", pretrain=False)

MAIN_ROWS = (
    Row("single_stream", "Single-stream (pretrained)", SINGLE, True),
    Row("vilbert_scratch", "ViLBERT, no pretraining", SCRATCH, False),
    Row("vilbert", "ViLBERT (pretrained)", VILBERT, True),
)


def depth_rows(depths: tuple[int, ...], text_layers: int, main_depth: int) -> list[Row]:
    rows = []
    for d in depths:
        spec = VILBERT if d == main_depth else ModelSpec(f"vilbert_depth{d}", coattention_depth(d, text_layers))
        rows.append(Row(spec.name if d != main_depth else "vilbert", f"ViLBERT, {d} co-attention layers", spec, True))
    return rows


def data_rows(shares: tuple[int, ...]) -> list[Row]:
    rows = []
    for share in shares:
        if share == 0:
            rows.append(Row("vilbert_scratch", "ViLBERT, 0% pretraining data", SCRATCH, False))
        elif share == 100:
            rows.append(Row("vilbert", "ViLBERT, 100% pretraining data", VILBERT, True))
        else:
            spec = ModelSpec(f"vilbert_data{share}", data_fraction=share / 100)
            rows.append(Row(spec.name, f"ViLBERT, {share}% pretraining data", spec, True))
    return rows


# --------------------------------------------------------------------------------------- plan


@dataclass
class Table:
    """A results table: its rows and where it is written."""

    name: str  # file stem under OUT: results, ablation_depth, ablation_data
    title: str
    rows: list[Row]


@dataclass
class DemoPlan:
    out: Path
    sizes: DemoSizes
    tables: list[Table]
    stages: list[Stage]
    skipped: dict[str, str]  # task -> why it is not run (not available in this build)


def available_tasks() -> set[str]:
    from vilbert.tasks.base import list_tasks

    return set(list_tasks())


def build_plan(out: str | Path, sizes: DemoSizes, ablations: bool = False) -> DemoPlan:
    """The stages of the demo (and its ablations) into `out`."""
    out = Path(out)
    ctx = _Context(out, sizes)
    tables = [Table("results", "ViLBERT on the generated world (cf. the paper's Table 1)", list(MAIN_ROWS))]
    if ablations:
        from vilbert.model import load_preset

        layers = load_preset(sizes.preset).num_hidden_layers
        main_depth = load_preset(sizes.preset).num_coattention_layers
        depths = tuple(sorted({2, 4, 6, main_depth} & set(range(1, layers + 1)) | {main_depth}))
        tables.append(Table("ablation_depth", "Depth of co-attention (cf. the paper's Table 2)",
                            depth_rows(depths, layers, main_depth)))
        tables.append(Table("ablation_data", "Share of pretraining data (cf. the paper's Table 3)",
                            data_rows((0, 25, 50, 100))))
    have = available_tasks()
    skipped = {t: f"task {t!r} is not available in this build" for t in (*TASKS, ZERO_SHOT, "pretrain") if t not in have}
    stages = [ctx.world_stage(), ctx.features_stage()]
    rows: dict[str, Row] = {}
    for table in tables:
        for row in table.rows:
            rows.setdefault(row.key, row)
    models: dict[str, ModelSpec] = {}
    for row in rows.values():
        models.setdefault(row.model.name, row.model)
    for spec in models.values():
        stages.append(ctx.config_stage(spec))
    if "pretrain" not in skipped:
        pretrained = {r.model.name: r.model for r in rows.values() if r.pretrained}
        for spec in sorted(pretrained.values(), key=lambda m: m.name != "vilbert"):
            stages.append(ctx.pretrain_stage(spec))
    # ViLBERT's rows first, so that an interrupted run already holds the most telling numbers.
    order = sorted(rows.values(), key=lambda r: r.key != "vilbert")
    for row in order:
        if row.pretrained and "pretrain" in skipped:
            continue
        for task in TASKS:
            if task not in skipped:
                stages.append(ctx.finetune_stage(row, task))
        if ZERO_SHOT not in skipped:
            stages.append(ctx.zero_shot_stage(row))
    return DemoPlan(out, sizes, tables, stages, skipped)


class _Context:
    """Builds each stage's function; the functions import the heavy modules only when they run."""

    def __init__(self, out: Path, sizes: DemoSizes) -> None:
        self.out = out
        self.sizes = sizes
        self.world = out / "world"
        self.features = out / "features.lmdb"

    # -- world and features ------------------------------------------------------------------

    def world_stage(self) -> Stage:
        s = self.sizes

        def run() -> dict[str, Any]:
            from vilbert.world import generate_world

            path = generate_world(self.world, s.images, s.seed, image_size=s.image_size, workers=1,
                                  train_fraction=s.train_fraction, val_fraction=s.val_fraction,
                                  max_objects=s.max_objects, max_proposals=s.max_proposals,
                                  captions_per_image=s.captions_per_image, vcr_per_image=s.vcr_per_image)
            splits = json.loads(Path(path).read_text())["splits"]
            return {"world": str(path), "images": {k: len(v) for k, v in splits.items()}}

        return Stage("world", run, s.images * s.seconds_per_image_world, f"generate {s.images} images")

    def features_stage(self) -> Stage:
        s = self.sizes

        def run() -> dict[str, Any]:
            from vilbert.features.boxes import read_coco_boxes
            from vilbert.features.extract import ExtractConfig, extract_features

            entries = read_coco_boxes(self.world / "proposals.json", self.world / "images")
            config = ExtractConfig(image_size=s.image_size, batch_size=16)
            report = extract_features(entries, self.features, config,
                                      boxes_source=f"annotations:{self.world / 'proposals.json'}")
            if report.failed:
                raise RuntimeError(f"{report.failed} images failed; see {self.features}/failures.jsonl")
            return {"written": report.written, "skipped": report.skipped}

        return Stage("features", run, 15 + s.images * s.seconds_per_image_features,
                     "region features of the world's proposals (EfficientNet-Lite0 + RoIAlign)")

    # -- models ------------------------------------------------------------------------------

    def config_path(self, spec: ModelSpec) -> Path:
        return self.out / "configs" / f"{spec.name}.json"

    def config_stage(self, spec: ModelSpec) -> Stage:
        def run() -> dict[str, Any]:
            from vilbert.features.store import FeatureStore
            from vilbert.model import load_preset

            config = load_preset(self.sizes.preset, **spec.overrides)
            meta = FeatureStore(self.features).meta
            # The model's region input and region classes follow the store's backbone.
            config.v_feature_size = int(meta["feature_dim"])
            config.v_target_size = int(meta["num_classes"])
            config.validate()
            write_json(self.config_path(spec), config.to_dict())
            return {"config": str(self.config_path(spec))}

        return Stage(f"config-{spec.name}", run, 1.0, "model config")

    def pretrain_dir(self, spec: ModelSpec) -> Path:
        return self.out / "runs" / "pretrain" / spec.name

    def pretrain_stage(self, spec: ModelSpec) -> Stage:
        s = self.sizes

        def run() -> dict[str, Any]:
            from vilbert.cli import pretrain as cli

            argv = [
                "--data", str(self.world), "--features", str(self.features), "--out", str(self.pretrain_dir(spec)),
                "--config", str(self.config_path(spec)), "--text-init", _text_init(s),
                "--max-steps", str(s.pretrain_steps), "--batch-size", str(s.pretrain_batch),
                "--lr", str(s.pretrain_lr), "--data-fraction", str(spec.data_fraction), "--seed", str(s.seed),
                "--max-regions", str(s.max_regions), "--bert-lr-scale", str(s.bert_lr_scale),
                "--alignment-weight", str(s.alignment_weight), "--resume",
            ]
            print("vilbert pretrain " + " ".join(argv), flush=True)
            code = cli.main(argv)
            if code != 0:
                raise RuntimeError(f"vilbert pretrain exited with {code}")
            model_dir = self.pretrain_dir(spec) / "model"
            if not (model_dir / "config.json").is_file():
                raise RuntimeError(f"pretraining finished without a model at {model_dir}")
            return {"model": str(model_dir), "val": _last_eval(self.pretrain_dir(spec))}

        est = 10 + s.pretrain_steps * s.pretrain_batch * s.seconds_per_pretrain_row
        return Stage(f"pretrain-{spec.name}", run, est,
                     f"pretrain {spec.name} ({s.pretrain_steps} steps of {s.pretrain_batch}, {spec.data_fraction:.0%} of the pairs)")

    def load_model(self, row: Row):
        """The row's starting point: its pretrained weights, or a fresh model (text from MiniLM)."""
        import torch

        from vilbert.model import ViLBertConfig, build_model, init_text_stream_from_bert, load_pretrained

        if row.pretrained:
            return load_pretrained(self.pretrain_dir(row.model) / "model")
        torch.manual_seed(self.sizes.seed)  # the same initial weights on every rerun
        model = build_model(ViLBertConfig.from_json(self.config_path(row.model)))
        if self.sizes.text_init:
            init_text_stream_from_bert(model, _text_init(self.sizes))
        return model

    def bert_lr_scales(self, model) -> dict[str, float]:
        """{module prefix: finetune_bert_lr_scale} for the text stream, the weights BERT initialises
        (the same modules whether the row was pretrained or not)."""
        if not self.sizes.text_init or self.sizes.finetune_bert_lr_scale == 1.0:
            return {}
        from vilbert.model import text_stream_prefixes

        return {prefix: self.sizes.finetune_bert_lr_scale for prefix in text_stream_prefixes(model)}

    def build_task(self, name: str, **options: Any):
        from vilbert.tasks.builder import build_task

        if name == "retrieval":
            options.setdefault("eval_images", self.sizes.retrieval_eval_images)
        return build_task(name, self.world, self.features, max_regions=self.sizes.max_regions, **options)

    def run_dir(self, row: Row, task: str) -> Path:
        return self.out / "runs" / row.key / task

    def finetune_stage(self, row: Row, task_name: str) -> Stage:
        s = self.sizes
        ft = s.finetune[task_name]

        def run() -> dict[str, Any]:
            import torch

            from vilbert.model import save_pretrained
            from vilbert.train import TrainConfig, train

            torch.manual_seed(s.seed)
            task = self.build_task(task_name)
            model = self.load_model(row)
            if ft.reinit:
                torch.manual_seed(s.seed)
                model.reinitialize(ft.reinit)
            config = TrainConfig(lr=ft.lr, max_steps=ft.steps, batch_size=ft.batch_size, seed=s.seed,
                                 warmup_fraction=0.1, progress=True, lr_scales=self.bert_lr_scales(model))
            out = self.run_dir(row, task_name)
            train(model, task, config, out, resume=True, eval_splits=())
            metrics = task.evaluate(model, s.eval_split)
            save_pretrained(model, out / "model")
            write_json(out / "metrics.json", {"split": s.eval_split, "metrics": metrics})
            # The trainer's checkpoints hold the optimizer state (twice the model) to resume an
            # unfinished run; a finished one keeps its model in model/, as `vilbert finetune` does.
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
            return {"split": s.eval_split, "metrics": metrics, "model": str(out / "model")}

        est = ft.steps * ft.batch_size * s.seconds_per_finetune_row * (4 if task_name in ("vcr", "retrieval") else 1)
        return Stage(f"{row.key}-{task_name}", run, est + 10,
                     f"fine-tune and evaluate {task_name} ({ft.steps} steps of {ft.batch_size})")

    def zero_shot_stage(self, row: Row) -> Stage:
        s = self.sizes

        def run() -> dict[str, Any]:
            task = self.build_task("retrieval", zero_shot=True)  # the alignment head scores the pairs
            model = self.load_model(row)
            metrics = task.evaluate(model, s.eval_split)
            out = self.run_dir(row, ZERO_SHOT)
            write_json(out / "metrics.json", {"split": s.eval_split, "metrics": metrics})
            return {"split": s.eval_split, "metrics": metrics}

        return Stage(f"{row.key}-{ZERO_SHOT}", run, 20.0, "zero-shot retrieval (alignment head, no fine-tuning)")


def _text_init(sizes: DemoSizes) -> str:
    if not sizes.text_init:
        return "none"
    from vilbert.cli.pretrain import shipped_minilm_dir

    return str(shipped_minilm_dir())


def _last_eval(run_dir: Path) -> dict[str, str]:
    import csv

    path = run_dir / "eval_log.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if rows else {}


def sizes_from_dict(data: dict[str, Any]) -> DemoSizes:
    data = dict(data)
    data["finetune"] = {k: FinetuneSizes(**{**v, "reinit": tuple(v.get("reinit", ()))})
                        for k, v in data.get("finetune", {}).items()}
    return DemoSizes(**data)


def with_overrides(sizes: DemoSizes, **overrides: Any) -> DemoSizes:
    return replace(sizes, **{k: v for k, v in overrides.items() if v is not None})

