"""Per-step logs of a run: a CSV, TensorBoard event files and, at the end, a PNG of the curves.

Only rank 0 logs. A resumed run first drops the rows a killed run wrote after its last checkpoint,
so the logs read as one uninterrupted run.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from matplotlib.figure import Figure

from vilbert.io.atomic import DamagedFileError, atomic_path, save_png

TRAIN_CSV = "train_log.csv"
EVAL_CSV = "eval_log.csv"
PLOT_PNG = "curves.png"


class _Csv:
    """A CSV whose columns grow when a new key appears (rewritten then; logs are small)."""

    def __init__(self, path: Path, keep_until_step: int | None) -> None:
        self.path = path
        self.rows: list[dict[str, float]] = []
        if keep_until_step is not None and path.is_file():
            self.rows = [r for r in _read_rows(path) if r["step"] <= keep_until_step]
        self.columns = _columns(self.rows)
        self._rewrite()

    def add(self, row: dict[str, float]) -> None:
        # A row for a step and the same columns replaces the earlier one (a resumed finished run
        # evaluates its last step again): one row per measurement.
        same = [i for i, r in enumerate(self.rows) if r.get("step") == row["step"] and r.keys() == row.keys()]
        if same:
            self.rows[same[0]] = row
            self._rewrite()
            return
        self.rows.append(row)
        if any(k not in self.columns for k in row):
            self.columns = _columns(self.rows)
            self._rewrite()
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerow(row)

    def _rewrite(self) -> None:
        with atomic_path(self.path) as tmp:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.columns)
                writer.writeheader()
                writer.writerows(self.rows)


def _read_rows(path: Path) -> list[dict[str, float]]:
    """The rows of a run's CSV log; a last line without its newline is a write a kill cut short
    (dropped), any other row that does not parse is an error naming the file and line."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]
    rows = []
    for number, row in enumerate(csv.DictReader(lines), start=2):
        try:
            rows.append({k: int(float(v)) if k == "step" else float(v)
                         for k, v in row.items() if k is not None and v not in ("", None)})
        except (TypeError, ValueError) as err:
            raise DamagedFileError(f"{path}: line {number} is not a row of numbers ({err}); "
                                   "delete the log to start it again") from err
        if "step" not in rows[-1]:
            raise DamagedFileError(f"{path}: line {number} has no step")
    return rows


def _columns(rows: list[dict[str, float]]) -> list[str]:
    columns = ["step"]
    for row in rows:
        columns += [k for k in row if k not in columns]
    return columns


class RunLogger:
    """CSV + TensorBoard writer for one run directory (a no-op on ranks other than 0)."""

    def __init__(self, out_dir: str | Path, enabled: bool = True, resume_step: int | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.train = _Csv(self.out_dir / TRAIN_CSV, resume_step)
        self.eval = _Csv(self.out_dir / EVAL_CSV, resume_step)
        from torch.utils.tensorboard import SummaryWriter  # imported lazily: slow, rank 0 only

        # purge_step hides events a killed run wrote after the step we resume from
        self.writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=resume_step)

    def log_train(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.train.add({"step": step, **values})
        for key, value in values.items():
            self.writer.add_scalar(f"train/{key}", value, step)

    def log_eval(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.eval.add({"step": step, **{f"{split}/{k}": v for k, v in metrics.items()}})
        for key, value in metrics.items():
            self.writer.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> Path | None:
        """Flush TensorBoard and draw the curves; returns the PNG path."""
        if not self.enabled:
            return None
        self.writer.close()
        return plot_curves(self.train.rows, self.eval.rows, self.out_dir / PLOT_PNG)


def plot_curves(train_rows: list[dict[str, float]], eval_rows: list[dict[str, float]], path: Path) -> Path:
    """One PNG: losses, learning rate and evaluation metrics against the step."""
    loss_keys = sorted({k for r in train_rows for k in r if "loss" in k})
    eval_keys = sorted({k for r in eval_rows for k in r if k != "step"})
    panels = 2 + (1 if eval_keys else 0)
    fig = Figure(figsize=(5 * panels, 4))
    axes = fig.subplots(1, panels, squeeze=False)
    for key in loss_keys:
        _line(axes[0, 0], train_rows, key)
    axes[0, 0].set_title("training loss")
    _line(axes[0, 1], train_rows, "lr")
    axes[0, 1].set_title("learning rate")
    for key in eval_keys:
        _line(axes[0, 2], eval_rows, key, marker="o")
    if eval_keys:
        axes[0, 2].set_title("evaluation")
    for ax in axes[0]:
        ax.set_xlabel("step")
        if ax.has_data():
            ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path, dpi=100)


def _line(ax, rows: list[dict[str, float]], key: str, marker: str | None = None) -> None:
    points = [(r["step"], r[key]) for r in rows if key in r and math.isfinite(r[key])]
    if points:
        xs, ys = zip(*points)
        ax.plot(xs, ys, label=key, marker=marker)


def last_row(path: str | Path) -> dict[str, str]:
    """The last row of a run's CSV log (values as written), or {} when there is none."""
    path = Path(path)
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if rows else {}
