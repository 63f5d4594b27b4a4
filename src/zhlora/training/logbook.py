"""``training_log.jsonl`` and ``loss_curve.png``: what a run reports about itself as it goes.

One JSON object per logging step (``step, loss, learning_rate, grad_norm, tokens_per_second,
epoch``; callbacks add ``{step, ...}`` rows of their own). Rows are appended and flushed as
training goes, so a crash loses at most the row being written; on resume the file is cut
back to the checkpoint's step, so no step appears twice.
"""

from __future__ import annotations

import json
from pathlib import Path

from zhlora.io_utils import atomic_write_text

LOG_NAME = "training_log.jsonl"
CURVE_NAME = "loss_curve.png"


def read_log_rows(path: str | Path) -> list[dict]:
    """The rows of a training log; a torn last line (a killed run) is skipped, not an error."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


class TrainingLog:
    """Append-only JSON-lines log of one run, cut back to ``resume_step`` when resuming."""

    def __init__(self, path: str | Path, resume_step: int | None = None, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            return
        kept = [] if resume_step is None else [row for row in read_log_rows(self.path) if row["step"] <= resume_step]
        atomic_write_text(self.path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept))

    def append(self, row: dict) -> None:
        """Add one row and flush it to disk."""
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()


def plot_loss_curve(rows: list[dict], path: str | Path, title: str) -> Path | None:
    """Draw training loss against optimizer step into a PNG; None when there is no loss row."""
    points = [(row["step"], row["loss"]) for row in rows if "loss" in row]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zhlora.io_utils import atomic_path

    steps, losses = zip(*points)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(steps, losses, marker="o" if len(points) < 30 else None, linewidth=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (nats / response token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
