"""Everything that sets the demo's cost and outcome, the same for every row of a table.

Each value has its reason in one line; the measurements behind them are in the README ("The
demo") and in git history. Change a value only with a rerun of `vilbert demo` and the README.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

TASKS = ("vqa", "vcr", "refer", "retrieval")
POOLERS = ("text_pooler", "image_pooler")


@dataclass(frozen=True)
class FinetuneSizes:
    steps: int
    batch_size: int
    lr: float
    reinit: tuple[str, ...] = ()  # modules started afresh before fine-tuning (every row alike)


def _finetune_defaults() -> dict[str, FinetuneSizes]:
    return {
        # VQA starts its poolers afresh: pretraining trains them only through alignment, and the
        # 0.6-epoch fine-tune sat at the answer prior with them (README: "The one departure").
        "vqa": FinetuneSizes(80, 32, 5e-4, reinit=POOLERS),
        "vcr": FinetuneSizes(50, 8, 5e-4),  # 4 rows per item: 32 rows a step, like VQA's
        "refer": FinetuneSizes(80, 32, 5e-4),
        "retrieval": FinetuneSizes(50, 8, 5e-4),  # 4 rows per item
    }


@dataclass(frozen=True)
class DemoSizes:
    """The world, the model and every run's steps; see the module docstring."""

    # The world: small and easy enough for a model trained for minutes on 2 CPU cores.
    images: int = 800
    train_fraction: float = 0.75
    val_fraction: float = 0.05  # test gets the rest (160 images), then the extra test images
    # More test images, train and val untouched: evaluation costs seconds where training costs
    # minutes, and at 160 test images (164 VCR items) evaluation noise alone moved VCR by ~4 points.
    extra_test_images: int = 480
    image_size: int = 384  # world images and extraction canvas (colour reads better than at 224)
    # + 40 early dims (the final ImageNet features nearly drop colour): off, as measured. With them
    # (scaled) the full demo held 7 of 13 claims, VQA 44.2, VCR Q->AR 11.0 (README "The demo").
    colour_features: bool = False
    max_objects: int = 4
    max_proposals: int = 14
    captions_per_image: int = 10
    vcr_per_image: int = 2  # twice the VCR test items: their accuracies moved 5-10 points with one
    retrieval_eval_images: int | None = 40  # retrieval ranks the first 40 test images x their 200 captions
    # The model: MiniLM's text stream (as the paper's starts from BERT) and a 2 x 256 visual stream.
    preset: str = "demo"
    text_init: bool = True
    max_regions: int = 14
    # Pretraining: 5x the paper's rate and a heavy alignment weight, or 180 steps learn no alignment.
    pretrain_steps: int = 180
    pretrain_batch: int = 64
    pretrain_lr: float = 5e-4
    pretrain_text_lr_scale: float = 0.1  # as the original: the BERT-initialised weights at a tenth
    alignment_weight: float = 100.0  # its gradient starts ~1000x below the masked-word loss's
    # Fine-tuning: a high rate for the new heads, a tenth of it for the text stream (one rate for all
    # collapsed VQA and RefCOCO+ to their answer priors).
    finetune: dict[str, FinetuneSizes] = field(default_factory=_finetune_defaults)
    finetune_text_lr_scale: float = 0.1
    eval_split: str = "test"
    seed: int = 0
    seeds: int = 1  # fine-tunes per row and task, at seed, seed + 1, ...: claims are decided against their spread
    # With seeds > 1, also pretrain at each seed (seed k of a pretrained row fine-tunes pretraining k):
    # on two CPUs one pretraining fell two ways and flipped 4 claims, a spread fine-tune seeds miss.
    vary_pretraining: bool = False
    # Seconds per unit for the time-left display (2 CPU cores, rounded up); not a setting of the run.
    seconds_per_image_world: float = 0.015
    seconds_per_image_features: float = 0.08
    seconds_per_pretrain_row: float = 0.018
    seconds_per_finetune_row: float = 0.019  # with its evaluation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DemoSizes:
        """The sizes `to_dict` wrote (after a JSON round trip)."""
        finetune = {task: FinetuneSizes(**{**ft, "reinit": tuple(ft.get("reinit", ()))})
                    for task, ft in data["finetune"].items()}
        return cls(**{**data, "finetune": finetune})


# What a demo folder made before a field existed ran with, where that is not the field's default:
# such a folder is another demo (its world has 160 test images), so its settings must not match.
BEFORE_THE_FIELD: dict[str, Any] = {"extra_test_images": 0}


def default_sizes() -> DemoSizes:
    return DemoSizes()


def quick_sizes() -> DemoSizes:
    """A tiny world and a tiny model: the whole pipeline in a few minutes (CI smoke test)."""
    return DemoSizes(
        images=48, train_fraction=0.7, val_fraction=0.1, extra_test_images=0, image_size=224, preset="tiny",
        text_init=False, max_regions=36,
        retrieval_eval_images=None,
        pretrain_steps=20, pretrain_batch=16, pretrain_lr=1e-3,
        finetune={t: FinetuneSizes(10, 8, 1e-3, reinit=POOLERS if t == "vqa" else ()) for t in TASKS},
        seconds_per_pretrain_row=0.002, seconds_per_finetune_row=0.002,
    )


def with_overrides(sizes: DemoSizes, finetune_steps: dict[str, int] | None = None, **overrides: Any) -> DemoSizes:
    """`sizes` with the given fields replaced (None keeps a field) and, per task named in
    `finetune_steps`, that many fine-tuning steps (every row alike)."""
    sizes = replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    if sizes.extra_test_images < 0:
        raise ValueError(f"extra test images must be 0 or more, got {sizes.extra_test_images}")
    if sizes.vary_pretraining and sizes.seeds < 2:
        raise ValueError(f"varying the pretraining needs 2 or more seeds, got {sizes.seeds}: one seed has no spread to measure")
    if finetune_steps:
        unknown = sorted(set(finetune_steps) - set(sizes.finetune))
        if unknown:
            raise ValueError(f"fine-tuning steps for unknown task(s) {unknown}: the demo fine-tunes {list(sizes.finetune)}")
        bad = {t: n for t, n in finetune_steps.items() if not isinstance(n, int) or n < 1}
        if bad:
            raise ValueError(f"fine-tuning steps must be whole numbers >= 1, got {bad}")
        finetune = {t: replace(ft, steps=finetune_steps.get(t, ft.steps)) for t, ft in sizes.finetune.items()}
        sizes = replace(sizes, finetune=finetune)
    return sizes
