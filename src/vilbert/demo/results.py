"""Results tables like the paper's Table 1: Markdown, JSON, a grouped bar chart, and a check of
the paper's qualitative claims stated as held / not held / undecided.

Numbers are percentages. A cell is None when its task did not run (the reason is in `notes`). A
task fine-tuned at several seeds shows the mean and the sample standard deviation. A claim comparing
two rows is decided on the margins of the seeds they share: seed k of both rows is fine-tuned at
the same seed (the same order of examples; with varied pretraining, from pretrainings at the same
seed), so the margin of seed k, a_k - b_k, is one draw of the margin the claim is about. The claim
holds when the mean of those margins exceeds their sample standard deviation, is not held when it
is below minus that, and is undecided in between. Where the rows share fewer than two seeds (a
report of an unfinished run), the spread is that of a difference of two independent single runs,
sqrt(s_a^2 + s_b^2). With one seed there is no spread: the sign of the margin decides, and says so.
"""

from __future__ import annotations

import math
import statistics
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
    values: dict[str, dict[str, float | None]]  # row label -> column label -> percent (the mean over seeds)
    notes: list[str] = field(default_factory=list)
    chance: dict[str, float] = field(default_factory=dict)  # column -> chance percent
    # VQA's floor is not chance but the answer prior: the best answer per question type.
    prior: dict[str, float] = field(default_factory=dict)  # column -> percent without the image
    # row label -> column label -> sample std over seeds (None with one seed), and every seed's value
    # in seed order (None where that seed has not run: seed k of two rows is compared with seed k).
    spread: dict[str, dict[str, float | None]] = field(default_factory=dict)
    runs: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "columns": [c for c, _, _ in COLUMNS], "rows": self.rows, "keys": self.keys,
                "values": self.values, "spread": self.spread, "runs": self.runs, "chance": self.chance,
                "prior": self.prior, "notes": self.notes}


Metrics = dict[str, float]


def make_table(title: str, rows: list[tuple[str, str]],
               metrics: dict[str, dict[str, Metrics | list[Metrics | None]]],
               notes: list[str] | None = None, test_images: int | None = None,
               prior: dict[str, float] | None = None) -> ResultsTable:
    """rows: (key, label); metrics: row key -> task -> metric -> value in [0, 1], or a list of such
    in seed order (None for a seed that has not run); prior: column -> the score without the
    image, in [0, 1] (VQA's answer prior)."""
    values: dict[str, dict[str, float | None]] = {}
    spread: dict[str, dict[str, float | None]] = {}
    runs: dict[str, dict[str, list[float | None]]] = {}
    for key, label in rows:
        per_task = metrics.get(key, {})
        values[label], spread[label], runs[label] = {}, {}, {}
        for column, task, metric in COLUMNS:
            found = per_task.get(task, [])
            by_seed = [None if m is None or metric not in m else 100.0 * float(m[metric])
                       for m in (found if isinstance(found, list) else [found])]
            seeds = [v for v in by_seed if v is not None]
            values[label][column] = round(statistics.fmean(seeds), 2) if seeds else None
            spread[label][column] = round(statistics.stdev(seeds), 2) if len(seeds) > 1 else None
            runs[label][column] = [None if v is None else round(v, 2) for v in by_seed] if seeds else []
    chance = {column: round(100.0 * value, 2) for column, value in VCR_CHANCE.items()}
    if test_images:
        for column, task, metric in COLUMNS:
            if task.endswith("retrieval"):
                k = int(metric.rsplit("r", 1)[1])
                chance[column] = round(100.0 * min(k, test_images) / test_images, 2)
    return ResultsTable(title, [label for _, label in rows], [key for key, _ in rows], values, list(notes or []), chance,
                        {column: round(100.0 * value, 2) for column, value in (prior or {}).items()}, spread, runs)


def to_markdown(table: ResultsTable) -> str:
    columns = [c for c, _, _ in COLUMNS]
    lines = [f"### {table.title}", "", "| model | " + " | ".join(columns) + " |",
             "| --- | " + " | ".join("---:" for _ in columns) + " |"]
    for label in table.rows:
        cells = [_cell(table.values[label].get(c), table.spread.get(label, {}).get(c)) for c in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if table.chance or table.prior:
        floor = {**table.chance, **table.prior}
        label = "chance (VQA: best answer per question type)" if table.prior else "chance"
        lines.append(f"| {label} | " + " | ".join(_cell(floor.get(c)) if c in floor else "" for c in columns) + " |")
    lines.append("")
    lines.append("All numbers are percentages on the world's test split; `-` = not run.")
    lines += [f"- {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def _cell(value: float | None, spread: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if spread is None else f"{value:.1f} ± {spread:.1f}"


@dataclass
class Claim:
    text: str
    held: bool | None  # None: could not be checked (a number is missing) or undecided (see `decided`)
    detail: str
    decided: bool = True  # False: the margin lies within the seeds' spread


def check_claims(table: ResultsTable, pretrained: str, unpretrained: str, single: str) -> list[Claim]:
    """The paper's qualitative claims on this table (row labels as given)."""
    v, sd = table.values, table.spread
    claims = [_compare(table, f"pretraining helps: {column}", pretrained, unpretrained, "pretrained", "unpretrained",
                       column) for column in CLAIM_COLUMNS]
    claims += [_compare(table, f"two streams beat one: {column}", pretrained, single, "ViLBERT", "single-stream", column)
               for column in CLAIM_COLUMNS]
    zs, chance = v[pretrained].get("Zero-shot R@1"), table.chance.get("Zero-shot R@1")
    if zs is None or not chance:
        claims.append(Claim("zero-shot retrieval far above chance", None, "zero-shot retrieval did not run"))
    else:
        needed, spread = FAR_ABOVE_CHANCE * chance, sd.get(pretrained, {}).get("Zero-shot R@1")
        detail = f"R@1 {zs:.1f} vs chance {chance:.1f} (needs >= {FAR_ABOVE_CHANCE:g}x)"
        if spread is None:  # one pretraining: the mean decides
            claims.append(Claim("zero-shot retrieval far above chance", zs >= needed, detail))
        else:  # one pretraining per seed: decided only when the bar lies outside mean ± spread
            detail += f"; spread {spread:.1f}"
            decided = abs(zs - needed) > spread
            claims.append(Claim("zero-shot retrieval far above chance", zs >= needed if decided else None, detail,
                                decided=decided))
    return claims


def multitask_claims(table: ResultsTable, multi: str, single: str) -> list[Claim]:
    """12-in-1's claim, that one multi-task model beats the single-task fine-tunes, per task."""
    return [_compare(table, f"multi-task beats single-task: {column}", multi, single, "multi-task", "single-task", column)
            for column in CLAIM_COLUMNS]


def paired_margins(table: ResultsTable, a: str, b: str, column: str) -> list[float]:
    """a_k - b_k for every seed k that both rows ran (seed k of two rows shares its fine-tune seed)."""
    ra, rb = table.runs.get(a, {}).get(column, []), table.runs.get(b, {}).get(column, [])
    return [x - y for x, y in zip(ra, rb, strict=False) if x is not None and y is not None]


def _independent_noise(table: ResultsTable, a: str, b: str, column: str) -> float | None:
    """The spread of a difference of two independent single runs of rows a and b,
    sqrt(s_a^2 + s_b^2), or None when either row ran one seed."""
    sa, sb = table.spread.get(a, {}).get(column), table.spread.get(b, {}).get(column)
    return None if sa is None or sb is None else math.hypot(sa, sb)


def _compare(table: ResultsTable, text: str, a: str, b: str, name_a: str, name_b: str, column: str) -> Claim:
    va, vb = table.values[a].get(column), table.values[b].get(column)
    if va is None or vb is None:
        return Claim(text, None, "not run")
    prior = table.prior.get(column)
    without_image = "" if prior is None else f"; without the image {prior:.1f}"
    detail = f"{name_a} {va:.1f} vs {name_b} {vb:.1f}{without_image}"
    margins = paired_margins(table, a, b, column)
    if len(margins) >= 2:  # the seeds both rows ran decide: their margins' mean against their spread
        margin, noise = statistics.fmean(margins), statistics.stdev(margins)
        detail += (f"; margin {margin:+.1f} (seeds {' / '.join(f'{m:+.1f}' for m in margins)}), "
                   f"spread {noise:.1f}")
    else:
        margin, noise = va - vb, _independent_noise(table, a, b, column)
        if noise is None:  # one seed: the sign of the margin decides (claims_text says so)
            return Claim(text, va > vb, detail)
        detail += f"; margin {margin:+.1f}, spread {noise:.1f} (of two independent runs)"
    if abs(margin) <= noise:
        return Claim(text, None, detail, decided=False)
    return Claim(text, margin > 0, detail)


def claims_text(claims: list[Claim], source: str = "the paper") -> str:
    def mark(c: Claim) -> str:
        if not c.decided:
            return "undecided: within the spread"
        return {True: "held", False: "NOT held", None: "not checked"}[c.held]

    held = sum(c.held is True for c in claims)
    undecided = sum(not c.decided for c in claims)
    seeds = any("spread" in c.detail for c in claims)
    rule = ("a claim holds when the mean of its per-seed margins (seed k of one row against seed k of the "
            "other) exceeds their sample standard deviation" if seeds
            else "one seed per fine-tune: decided by the sign of the margin")
    lines = [f"Claims of {source} on this run ({held}/{len(claims)} held"
             + (f", {undecided} undecided" if undecided else "") + f"; {rule}):"]
    lines += [f"- [{mark(c)}] {c.text} ({c.detail})" for c in claims]
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
        errors = [table.spread.get(label, {}).get(c) or 0.0 for c in columns]
        ax.bar(x - 0.4 + width * (k + 0.5), [h if h is not None else 0.0 for h in heights], width, label=label,
               yerr=errors if any(errors) else None, capsize=2)
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
                  extra: dict[str, Any] | None = None, claims_source: str = "the paper") -> str:
    """OUT/<stem>.md, .json and .png; returns the Markdown (with the claims, when given)."""
    out = Path(out_dir)
    text = to_markdown(table)
    if claims is not None:
        text += "\n" + claims_text(claims, claims_source)
    with atomic_path(out / f"{stem}.md") as tmp:
        tmp.write_text(text)
    data = table.to_dict()
    if claims is not None:
        data["claims"] = [{"claim": c.text, "held": c.held, "decided": c.decided, "detail": c.detail} for c in claims]
    data.update(extra or {})
    write_json(out / f"{stem}.json", data)
    plot_table(table, out / f"{stem}.png")
    return text

