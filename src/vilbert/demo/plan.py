"""The demo's plan: the paper's Table 1 experiment on the generated world, as resumable stages.

    world -> features -> pretrain ViLBERT, pretrain the single-stream baseline
          -> for each row (single-stream pretrained, ViLBERT without pretraining, ViLBERT
             pretrained): fine-tune and evaluate VQA, VCR, referring expressions, retrieval;
             zero-shot retrieval with the alignment head
          -> OUT/results.{md,json,png}

The ablations (`--ablations`) reuse the world and features: the depth of co-attention (2, 4, 6
layers; pretrained and fine-tuned like the main ViLBERT row) and the share of pretraining data
(0, 25, 50, 100%; the same number of pretraining steps over a smaller nested share of pairs) and
multi-task fine-tuning (one model on the four tasks at once with the four fine-tunes' steps in all,
against the four single-task fine-tunes of the same pretrained model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vilbert.demo.rows import MAIN_ROWS, ModelSpec, Row, data_rows, depth_rows, multitask_rows
from vilbert.demo.sizes import TASKS, DemoSizes
from vilbert.demo.stages import Stage
from vilbert.demo.steps import ZERO_SHOT, Steps
from vilbert.model import load_preset

WORLD, FEATURES, PRETRAIN, MULTITASK = "world", "features", "pretrain", "multitask"


@dataclass(frozen=True)
class StageKey:
    """What a stage does: `step` is "world", "features", "pretrain" (of model `subject`) or a task
    (fine-tuned, or zero-shot, for row `subject`). `name` is its marker and log name under OUT."""

    step: str
    subject: str = ""
    seed: int = 0  # the seed's index (0: the demo's seed; k: seed + k), of fine-tuning or pretraining

    @property
    def name(self) -> str:
        if self.step in (WORLD, FEATURES):
            return self.step
        suffix = f"-seed{self.seed}" if self.seed else ""
        if self.step == PRETRAIN:
            return f"{PRETRAIN}-{self.subject}{suffix}"
        return f"{self.subject}-{self.step}{suffix}"


@dataclass
class Table:
    """A results table: its rows and where it is written."""

    name: str  # file stem under OUT: results, ablation_depth, ablation_data, ablation_multitask
    title: str
    rows: list[Row]


@dataclass
class DemoPlan:
    out: Path
    sizes: DemoSizes
    tables: list[Table]
    steps: dict[StageKey, Stage]  # in the order they run

    @property
    def stages(self) -> list[Stage]:
        return list(self.steps.values())


def build_plan(out: str | Path, sizes: DemoSizes, ablations: bool = False) -> DemoPlan:
    """The stages of the demo (and its ablations) into `out`."""
    out = Path(out)
    tables = [Table("results", "ViLBERT on the generated world (cf. the paper's Table 1)", list(MAIN_ROWS))]
    if ablations:
        preset = load_preset(sizes.preset)
        layers, main_depth = preset.num_hidden_layers, preset.num_coattention_layers
        depths = tuple(sorted({2, 4, 6, main_depth} & set(range(1, layers + 1)) | {main_depth}))
        tables.append(Table("ablation_depth", "Depth of co-attention (cf. the paper's Table 2)",
                            depth_rows(depths, layers, main_depth)))
        tables.append(Table("ablation_data", "Share of pretraining data (cf. the paper's Table 3)",
                            data_rows((0, 25, 50, 100))))
        tables.append(Table("ablation_multitask", "Multi-task fine-tuning, same total steps (cf. 12-in-1)",
                            multitask_rows()))
    rows: dict[str, Row] = {}
    for table in tables:
        for row in table.rows:
            rows.setdefault(row.key, row)
    do = Steps(out, sizes)
    steps: dict[StageKey, Stage] = {}

    def add(key: StageKey, run, estimate: float, description: str, needs: tuple[StageKey, ...] = ()) -> None:
        steps[key] = Stage(key.name, run, estimate, description, needs=tuple(k.name for k in needs))

    def start_of(row: Row, seed: int) -> tuple[StageKey, ...]:
        """The stage a run of `row` at `seed` starts from: its pretraining, or the features."""
        if row.pretrained:
            return (StageKey(PRETRAIN, row.model.name, do.pretrain_seed(row, seed)),)
        return (StageKey(FEATURES),)

    s = sizes
    images = s.images + s.extra_test_images
    add(StageKey(WORLD), do.make_world, images * s.seconds_per_image_world, f"generate {images} images")
    add(StageKey(FEATURES), do.extract_features, 15 + images * s.seconds_per_image_features,
        "region features of the world's proposals (EfficientNet-Lite0 + RoIAlign)", needs=(StageKey(WORLD),))
    pretrained: dict[str, ModelSpec] = {r.model.name: r.model for r in rows.values() if r.pretrained}
    for spec in sorted(pretrained.values(), key=lambda m: m.name != "vilbert"):
        for seed in range(do.pretrain_seeds):
            add(StageKey(PRETRAIN, spec.name, seed), lambda spec=spec, seed=seed: do.pretrain(spec, seed),
                10 + s.pretrain_steps * s.pretrain_batch * s.seconds_per_pretrain_row,
                f"pretrain {spec.name} ({s.pretrain_steps} steps of {s.pretrain_batch}, "
                f"{spec.data_fraction:.0%} of the pairs, seed {s.seed + seed})", needs=(StageKey(FEATURES),))
    # ViLBERT's rows first, so that an interrupted run already holds the most telling numbers.
    for row in sorted(rows.values(), key=lambda r: r.key != "vilbert"):
        if row.multitask:
            steps_all = sum(s.finetune[t].steps for t in TASKS)
            cost = sum(10 + s.finetune[t].steps * s.finetune[t].batch_size * s.seconds_per_finetune_row
                       * (4 if t in ("vcr", "retrieval") else 1) for t in TASKS)
            for seed in range(s.seeds):
                add(StageKey(MULTITASK, row.key, seed), lambda row=row, seed=seed: do.multitask(do.multitask_run(row, seed)),
                    cost, f"fine-tune {', '.join(TASKS)} together and evaluate ({steps_all} steps, seed {s.seed + seed})",
                    needs=start_of(row, seed))
            continue  # its zero-shot retrieval is its pretrained model's, already a row
        for seed in range(s.seeds):
            for task in TASKS:
                ft = s.finetune[task]
                rows_per_item = 4 if task in ("vcr", "retrieval") else 1
                add(StageKey(task, row.key, seed), lambda row=row, task=task, seed=seed: do.finetune(row, task, seed),
                    10 + ft.steps * ft.batch_size * s.seconds_per_finetune_row * rows_per_item,
                    f"fine-tune and evaluate {task} ({ft.steps} steps of {ft.batch_size}, seed {s.seed + seed})",
                    needs=start_of(row, seed))
        for seed in range(do.pretrain_seeds if row.pretrained else 1):  # one per pretrained model
            add(StageKey(ZERO_SHOT, row.key, seed), lambda row=row, seed=seed: do.zero_shot(row, seed), 20.0,
                "zero-shot retrieval (alignment head, no fine-tuning)" + (f", pretraining seed {s.seed + seed}" if seed else ""),
                needs=start_of(row, seed))
    return DemoPlan(out, sizes, tables, steps)
