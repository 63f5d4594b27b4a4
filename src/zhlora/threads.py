"""CPU threads for torch: an explicit choice, ``OMP_NUM_THREADS``, or as many as there are idle cores.

torch starts one OpenMP thread per core. On a machine where other processes already keep cores
busy, those threads wait for each other at every operator (each waits for the slowest, and one
of them is always descheduled): on 2 cores with one other busy process, the demo's training was
reported (issue 14) at 3 s per step with 2 threads and 10-30x faster with 1. So the default is the
number of cores not already busy (1-minute load average), at least 1; see perf/README.md,
"CPU threads and the demo", for what was and was not measured.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

from zhlora.errors import ZhloraError

logger = logging.getLogger(__name__)

_warned = False
# This process's own work is part of the load average: without subtracting it, a long process
# (`zhlora run`, a test session) would see its own earlier steps as "other" load and drop to 1 thread.
_STARTED_WALL, _STARTED_CPU = time.monotonic(), time.process_time()


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs the container's cgroup quota allows (``cpu.max`` of cgroup v2, ``cfs_quota_us`` of v1), None when unlimited.

    A container limited to 1.5 CPUs on a 64-core host sees 64 cores in its affinity mask; 64 threads
    would each get a sliver of 1.5 CPUs and wait for each other at every operator.
    """
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # cgroup v2: "max 100000" or "150000 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())  # cgroup v1: -1 when unlimited
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def available_cores() -> int:
    """Cores this process may use: its CPU affinity (else ``os.cpu_count()``), capped by the cgroup quota (rounded up)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return cores if limit is None else max(1, min(cores, math.ceil(limit)))


def check_not_above_cores(threads: int, source: str) -> None:
    """Refuse more threads than cores this process may use: they only wait for each other (10x slower, load 290 on 2 cores)."""
    cores = available_cores()
    if threads > cores:
        fix = f"Pass --num_threads {cores} or fewer" if source == "--num_threads" else \
            f"Set OMP_NUM_THREADS to {cores} or fewer (or unset it, or pass --num_threads)"
        raise ZhloraError(f"{source} {threads} is more than the {cores} CPU core(s) this process may use (its CPU "
                          f"affinity and cgroup quota); the extra threads would only wait for each other. {fix}.")


def default_threads(cores: int, load: float) -> int:
    """Threads for ``cores`` cores when ``load`` runnable processes (1-minute average) already use them.

    Examples: 2 idle cores -> 2; 2 cores and one busy process -> 1; 2 cores, load 7 -> 1; 16
    cores, load 3.4 -> 13 (rounded to the nearest whole core).
    """
    return max(1, min(cores, int(cores - load + 0.5)))


def own_busy_cores() -> float:
    """Cores this process has kept busy on average since zhlora started (CPU seconds / wall seconds)."""
    wall = time.monotonic() - _STARTED_WALL
    return 0.0 if wall < 1.0 else max(0.0, (time.process_time() - _STARTED_CPU) / wall)


def resolve_threads(requested: int | None) -> tuple[int, str]:
    """``(threads, why)``: ``--num_threads``, else ``OMP_NUM_THREADS``, else :func:`default_threads`."""
    if requested is not None:
        if requested <= 0:
            raise ZhloraError(f"--num_threads must be a positive number of threads, got {requested}.")
        check_not_above_cores(requested, "--num_threads")
        return requested, "--num_threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ZhloraError(f'OMP_NUM_THREADS must be a positive integer, got "{env}". Unset it or pass --num_threads.') from None
        if value <= 0:
            raise ZhloraError(f'OMP_NUM_THREADS must be a positive integer, got "{env}". Unset it or pass --num_threads.')
        check_not_above_cores(value, "OMP_NUM_THREADS")
        return value, "OMP_NUM_THREADS"
    cores, load, own = available_cores(), os.getloadavg()[0], own_busy_cores()
    return default_threads(cores, max(0.0, load - own)), f"{cores} cores, load average {load:.1f} ({own:.1f} of it this process)"


def oversubscribed(threads: int, cores: int, load: float) -> bool:
    """Whether ``threads`` more busy threads would visibly exceed the cores (by more than one core)."""
    return load + threads > cores + 1


def apply_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads (an explicit ``requested`` also becomes ``OMP_NUM_THREADS``); return them.

    Warns once per process when the machine is visibly oversubscribed, because then every
    figure of speed (and the run's duration) depends on the other processes.
    """
    global _warned
    import torch

    threads, why = resolve_threads(requested)
    torch.set_num_threads(threads)
    if requested is not None:  # an explicit choice holds for processes started later; a default is re-chosen
        os.environ["OMP_NUM_THREADS"] = str(threads)
    cores, load = available_cores(), max(0.0, os.getloadavg()[0] - own_busy_cores())
    logger.debug("torch uses %d CPU thread(s) (%s)", threads, why)
    if not _warned and not torch.cuda.is_available() and oversubscribed(threads, cores, load):
        _warned = True
        hint = " Pass --num_threads 1 to stop its threads from waiting on each other." if threads > 1 else ""
        logger.warning(
            "This machine is busy: load average %.1f from other processes on %d cores, and zhlora adds %d thread(s) (%s), so it will run "
            "slower than on an idle machine.%s", load, cores, threads, why, hint)
    return threads
