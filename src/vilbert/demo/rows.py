"""The demo's experiment rows: which models are pretrained, and which rows each table compares.

Every row is one model fine-tuned on every task; only the model differs between rows, except in
the multi-task table, where one row fine-tunes one model on all the tasks at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """A model to pretrain (or not): its name under OUT/runs/pretrain and its preset overrides."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)  # on top of the demo's preset
    pretrain: bool = True
    data_fraction: float = 1.0


@dataclass(frozen=True)
class Row:
    """One row of a results table: a model, fine-tuned on every task."""

    key: str  # folder under OUT/runs
    label: str  # as printed in the table
    model: ModelSpec
    pretrained: bool
    multitask: bool = False  # one fine-tune over every task together (12-in-1), not one per task


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
    """The co-attention depth ablation (the paper's Table 2); the main depth is the main row."""
    rows = []
    for d in depths:
        spec = VILBERT if d == main_depth else ModelSpec(f"vilbert_depth{d}", coattention_depth(d, text_layers))
        rows.append(Row(spec.name if d != main_depth else "vilbert", f"ViLBERT, {d} co-attention layers", spec, True))
    return rows


def data_rows(shares: tuple[int, ...]) -> list[Row]:
    """The pretraining-data ablation (the paper's Table 3): the same steps over a nested share."""
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


def multitask_rows() -> list[Row]:
    """Single-task fine-tunes (the main row) against one multi-task fine-tune of the same
    pretrained model with the same total number of steps (12-in-1's comparison)."""
    return [Row("vilbert", "ViLBERT, single-task (4 models)", VILBERT, True),
            Row("vilbert_multitask", "ViLBERT, multi-task (1 model)", VILBERT, True, multitask=True)]
