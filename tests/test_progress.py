"""Progress without a terminal: periodic log lines, never a tqdm bar written into a log file."""

from __future__ import annotations

import logging

from zhlora.progress import LineProgress, format_duration, progress_bar


def test_without_a_tty_progress_is_log_lines(caplog, monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    assert isinstance(progress_bar(10, "training", "step"), LineProgress)
    with caplog.at_level(logging.INFO, logger="zhlora.progress"):
        with LineProgress(4, "training", "step", initial=1, interval=0.0) as bar:
            bar.set_postfix(loss="2.1034")
            bar.update(1)
            bar.update(2)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("training: 2/4 steps (50%), ") and "left; loss=2.1034" in lines[0]
    assert lines[-1].startswith("training: 4/4 steps (100%)") and "left" not in lines[-1]
    assert len(lines) == 2 and all("\r" not in line for line in lines)


def test_quiet_progress_and_interval(caplog):
    with caplog.at_level(logging.INFO, logger="zhlora.progress"):
        with LineProgress(100, "ceval", "item", disable=True) as bar:
            bar.update(100)
        with LineProgress(100, "mmlu", "item", interval=3600) as bar:
            for _ in range(100):
                bar.update(1)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["mmlu"]  # one line at the end only


def test_format_duration():
    assert [format_duration(s) for s in (5, 600, 9000)] == ["5 s", "10 min", "2.5 h"]
