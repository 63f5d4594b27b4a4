"""Progress for long loops: a tqdm bar on a terminal, periodic log lines everywhere else.

A tqdm bar written to a file or a pipe (a cluster job's log, ``zhlora run > log``) becomes one
line thousands of characters long. Without a TTY the same calls therefore log one line every
``interval`` seconds (and at the end): ``training: 120/400 steps (30%), 1.9 s/step, about 9 min
left; loss=2.1034``.
"""

from __future__ import annotations

import logging
import sys
import time

logger = logging.getLogger("zhlora.progress")

LINE_INTERVAL_SECONDS = 30.0


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2.5 h``: a rough human duration for estimates."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class LineProgress:
    """The part of tqdm's interface zhlora uses (update, set_postfix, close, ``with``), as log lines."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0, disable: bool = False,
                 interval: float = LINE_INTERVAL_SECONDS):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.disable, self.interval = disable, interval
        self.postfix = ""
        self._start_n, self._started = initial, time.monotonic()
        self._last_line, self._logged_n = self._started, initial

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.disable and time.monotonic() - self._last_line >= self.interval:
            self._line()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        if not self.disable and self.n != self._logged_n:
            self._line()
        self.disable = True

    def _line(self) -> None:
        now = time.monotonic()
        done = self.n - self._start_n
        text = f"{self.desc}: {self.n}/{self.total} {self.unit}s"
        if self.total:
            text += f" ({100 * self.n / self.total:.0f}%)"
        if done > 0:
            per = (now - self._started) / done
            text += f", {per:.2f} s/{self.unit}" if per < 100 else f", {format_duration(per)}/{self.unit}"
            if self.total and self.n < self.total:
                text += f", about {format_duration(per * (self.total - self.n))} left"
        if self.postfix:
            text += f"; {self.postfix}"
        logger.info("%s", text)
        self._last_line, self._logged_n = now, self.n


def progress_bar(total: int, desc: str, unit: str, initial: int = 0, disable: bool = False):
    """A tqdm bar when stderr is a terminal, else a :class:`LineProgress` with the same calls."""
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable, dynamic_ncols=True)
    return LineProgress(total, desc, unit, initial=initial, disable=disable)
