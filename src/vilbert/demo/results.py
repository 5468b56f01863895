"""Results tables like the paper's Table 1: Markdown, JSON, a grouped bar chart, and a check of
the paper's qualitative claims stated as held / not held.

Numbers are percentages. A cell is None when its task did not run (the reason is in `notes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from vilbert.io.atomic import atomic_path, save_png, write_json

# (column label, task, metric key): the paper's Table 1 columns.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("VQA", "vqa", "accuracy"),
    ("VCR Q->A", "vcr", "q_a"),
    ("VCR QA->R", "vcr", "qa_r"),
    ("VCR Q->AR", "vcr", "q_ar"),
    ("RefCOCO+", "refer", "accuracy"),
    ("Retrieval R@1", "retrieval", "ir_r1"),
    ("Retrieval R@5", "retrieval", "ir_r5"),
    ("Retrieval R@10", "retrieval", "ir_r10"),
    ("Zero-shot R@1", "zero_shot_retrieval", "ir_r1"),
    ("Zero-shot R@5", "zero_shot_retrieval", "ir_r5"),
    ("Zero-shot R@10", "zero_shot_retrieval", "ir_r10"),
)
# The fine-tuned tasks the claims compare (one column each; retrieval by R@1).
CLAIM_COLUMNS = ("VQA", "VCR Q->A", "VCR QA->R", "VCR Q->AR", "RefCOCO+", "Retrieval R@1")
FAR_ABOVE_CHANCE = 3.0  # "far above chance": at least this many times the chance rate
VCR_CHANCE = {"VCR Q->A": 0.25, "VCR QA->R": 0.25, "VCR Q->AR": 0.0625}  # four choices each


@dataclass
class ResultsTable:
    title: str
    rows: list[str]  # row labels, in order
    keys: list[str]  # row keys (run folders)
    values: dict[str, dict[str, float | None]]  # row label -> column label -> percent
    notes: list[str] = field(default_factory=list)
    chance: dict[str, float] = field(default_factory=dict)  # column -> chance percent
    # VQA's floor is not chance but the answer prior: the best answer per question type.
    prior: dict[str, float] = field(default_factory=dict)  # column -> percent without the image

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "columns": [c for c, _, _ in COLUMNS], "rows": self.rows, "keys": self.keys,
                "values": self.values, "chance": self.chance, "prior": self.prior, "notes": self.notes}


def make_table(title: str, rows: list[tuple[str, str]], metrics: dict[str, dict[str, dict[str, float]]],
               notes: list[str] | None = None, test_images: int | None = None,
               prior: dict[str, float] | None = None) -> ResultsTable:
    """rows: (key, label); metrics: row key -> task -> metric -> value in [0, 1]; prior: column ->
    the score without the image, in [0, 1] (VQA's answer prior)."""
    values: dict[str, dict[str, float | None]] = {}
    for key, label in rows:
        per_task = metrics.get(key, {})
        values[label] = {}
        for column, task, metric in COLUMNS:
            value = per_task.get(task, {}).get(metric)
            values[label][column] = None if value is None else round(100.0 * float(value), 2)
    chance = {column: round(100.0 * value, 2) for column, value in VCR_CHANCE.items()}
    if test_images:
        for column, task, metric in COLUMNS:
            if task.endswith("retrieval"):
                k = int(metric.rsplit("r", 1)[1])
                chance[column] = round(100.0 * min(k, test_images) / test_images, 2)
    return ResultsTable(title, [label for _, label in rows], [key for key, _ in rows], values, list(notes or []), chance,
                        {column: round(100.0 * value, 2) for column, value in (prior or {}).items()})


def to_markdown(table: ResultsTable) -> str:
    columns = [c for c, _, _ in COLUMNS]
    lines = [f"### {table.title}", "", "| model | " + " | ".join(columns) + " |",
             "| --- | " + " | ".join("---:" for _ in columns) + " |"]
    for label in table.rows:
        cells = [_cell(table.values[label].get(c)) for c in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if table.chance or table.prior:
        floor = {**table.chance, **table.prior}
        label = "chance (VQA: best answer per question type)" if table.prior else "chance"
        lines.append(f"| {label} | " + " | ".join(_cell(floor.get(c)) if c in floor else "" for c in columns) + " |")
    lines.append("")
    lines.append("All numbers are percentages on the world's test split; `-` = not run.")
    lines += [f"- {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


@dataclass
class Claim:
    text: str
    held: bool | None  # None: could not be checked (a number is missing)
    detail: str


def check_claims(table: ResultsTable, pretrained: str, unpretrained: str, single: str) -> list[Claim]:
    """The paper's qualitative claims on this table (row labels as given)."""
    v = table.values
    claims = []
    for column in CLAIM_COLUMNS:
        claims.append(_compare(f"pretraining helps: {column}", v[pretrained].get(column), v[unpretrained].get(column),
                               "pretrained", "unpretrained", table.prior.get(column)))
    for column in CLAIM_COLUMNS:
        claims.append(_compare(f"two streams beat one: {column}", v[pretrained].get(column), v[single].get(column),
                               "ViLBERT", "single-stream", table.prior.get(column)))
    zs, chance = v[pretrained].get("Zero-shot R@1"), table.chance.get("Zero-shot R@1")
    if zs is None or not chance:
        claims.append(Claim("zero-shot retrieval far above chance", None, "zero-shot retrieval did not run"))
    else:
        claims.append(Claim("zero-shot retrieval far above chance", zs >= FAR_ABOVE_CHANCE * chance,
                            f"R@1 {zs:.1f} vs chance {chance:.1f} (needs >= {FAR_ABOVE_CHANCE:g}x)"))
    return claims


def _compare(text: str, a: float | None, b: float | None, name_a: str, name_b: str,
             prior: float | None = None) -> Claim:
    if a is None or b is None:
        return Claim(text, None, "not run")
    without_image = "" if prior is None else f"; without the image {prior:.1f}"
    return Claim(text, a > b, f"{name_a} {a:.1f} vs {name_b} {b:.1f}{without_image}")


def claims_text(claims: list[Claim]) -> str:
    marks = {True: "held", False: "NOT held", None: "not checked"}
    held = sum(c.held is True for c in claims)
    lines = [f"Claims of the paper on this run ({held}/{len(claims)} held):"]
    lines += [f"- [{marks[c.held]}] {c.text} ({c.detail})" for c in claims]
    return "\n".join(lines) + "\n"


def plot_table(table: ResultsTable, path: str | Path) -> Path:
    """A grouped bar chart: one group per column, one bar per row; chance and the answer prior as ticks."""
    columns = [c for c, _, _ in COLUMNS]
    n = len(table.rows)
    width = 0.8 / max(n, 1)
    x = np.arange(len(columns))
    fig = Figure(figsize=(max(8, 1.1 * len(columns)), 4.5))
    ax = fig.subplots()
    for k, label in enumerate(table.rows):
        heights = [table.values[label].get(c) for c in columns]
        ax.bar(x - 0.4 + width * (k + 0.5), [h if h is not None else 0.0 for h in heights], width, label=label)
    for floor, name, style in ((table.chance, "chance", "dashed"), (table.prior, "without the image", "dotted")):
        for i, column in enumerate(columns):
            if column in floor:
                ax.hlines(floor[column], x[i] - 0.4, x[i] + 0.4, colors="black", linestyles=style, linewidth=1,
                          label=name if i == min(columns.index(c) for c in floor) else None)
    ax.set_xticks(x)
    ax.set_xticklabels(columns, rotation=30, ha="right")
    ax.set_ylabel("% (test split)")
    ax.set_ylim(0, 100)
    ax.set_title(table.title)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return save_png(fig, path, dpi=100)


def write_results(table: ResultsTable, out_dir: str | Path, stem: str, claims: list[Claim] | None = None,
                  extra: dict[str, Any] | None = None) -> str:
    """OUT/<stem>.md, .json and .png; returns the Markdown (with the claims, when given)."""
    out = Path(out_dir)
    text = to_markdown(table)
    if claims is not None:
        text += "\n" + claims_text(claims)
    with atomic_path(out / f"{stem}.md") as tmp:
        tmp.write_text(text)
    data = table.to_dict()
    if claims is not None:
        data["claims"] = [{"claim": c.text, "held": c.held, "detail": c.detail} for c in claims]
    data.update(extra or {})
    write_json(out / f"{stem}.json", data)
    plot_table(table, out / f"{stem}.png")
    return text

