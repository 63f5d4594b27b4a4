"""``training_log.jsonl``: what a run reports about itself as it goes.

One JSON object per logging step (``step, loss, learning_rate, grad_norm, tokens_per_second,
epoch``; callbacks add ``{step, ...}`` rows of their own). Rows are appended and flushed as
training goes, so a crash loses at most the row being written; on resume the file is cut
back to the checkpoint's step, so no step appears twice.
"""

from __future__ import annotations

import json
from pathlib import Path

from zhlora.io_utils import atomic_write_text


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
